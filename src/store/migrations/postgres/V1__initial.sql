-- The PostgreSQL store: the same tables as the SQLite one (its three
-- migrations in one), times as milliseconds since the epoch in BIGINT.
-- Applied by refinery, once, under an advisory lock; never edit a shipped
-- migration: add a V2.

CREATE TABLE processed_events (event_id TEXT PRIMARY KEY);

CREATE TABLE journeys (customer_id TEXT PRIMARY KEY, state TEXT NOT NULL);

CREATE TABLE emails (
    -- Creation order; ties in due time keep it.
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    template TEXT NOT NULL,
    class TEXT NOT NULL,
    order_id TEXT,
    due_at BIGINT NOT NULL,
    fire_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    -- JSON as text, byte for byte what was written (jsonb would refuse
    -- \u0000 in a string).
    data TEXT NOT NULL,
    recipient TEXT,
    locale TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Attempts that may have been delivered (the connection broke after
    -- the message was sent): a duplicate downstream can only come from
    -- these, and carries the same Message-ID.
    ambiguous_attempts INTEGER NOT NULL DEFAULT 0,
    last_reply TEXT,
    decided_at BIGINT,
    lease_owner TEXT,
    lease_until BIGINT,
    -- When it was first handed to the mailer: retries stop max_age after.
    first_attempt_at BIGINT,
    -- The stream (file, topic partition) whose reader fires it.
    stream TEXT NOT NULL DEFAULT '',
    -- The A/B variant each email was assigned (NULL: the template has none).
    variant TEXT,
    -- Why a pending email waits past its due time (frequency cap, quiet
    -- hours): fire_at holds the new time.
    deferred TEXT
);
CREATE INDEX emails_pending_fire ON emails (fire_at, id) WHERE status = 'pending';
CREATE INDEX emails_pending_stream ON emails (stream, fire_at, id) WHERE status = 'pending';
CREATE INDEX emails_pending_order ON emails (customer_id, order_id) WHERE status = 'pending';
CREATE INDEX emails_sending ON emails (lease_until) WHERE status = 'sending';

CREATE TABLE positions (source TEXT PRIMARY KEY, position TEXT NOT NULL);

-- Every status an email takes, in order: an audit trail of what was
-- decided when (approved, cancelled, sent...).
CREATE TABLE email_log (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX email_log_email ON email_log (email_id);

-- Bound to this schema when created, whatever the caller's search_path.
CREATE FUNCTION email_log_status() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO email_log (email_id, status, at)
    VALUES (NEW.id, NEW.status,
            floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint);
    RETURN NULL;
END
$$;
CREATE TRIGGER email_log_insert AFTER INSERT ON emails
    FOR EACH ROW EXECUTE FUNCTION email_log_status();
CREATE TRIGGER email_log_update AFTER UPDATE OF status ON emails
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION email_log_status();

-- Small settings the workers sharing a store must agree on.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
-- The shop figures' row exists from the start, so that a transaction can
-- lock it before the first order ever writes it (an empty object reads as
-- empty figures).
INSERT INTO meta (key, value) VALUES ('shop_stats', convert_to('{}', 'UTF8'));

CREATE TABLE suppressed_addresses (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
