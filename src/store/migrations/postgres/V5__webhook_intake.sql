-- Webhooks received over HTTPS: each delivery is stored (committed) before
-- the shop is answered 2xx, then applied in arrival order by the one worker
-- that holds the intake's lease, in the transaction of its batch's effects.
-- SQLite's migration is the same (src/store/sqlite.rs).

CREATE TABLE intake (
    -- Arrival order. Consumed by `applied_at`, never by a position: an id
    -- may commit after a greater one was read.
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The shop connection (webhook endpoint) it came on.
    source TEXT NOT NULL,
    -- The platform's delivery id, the same on its retries (NULL: none sent).
    delivery_id TEXT,
    -- The request's headers: JSON [[name, value], ...].
    headers TEXT,
    -- The body as signed; NULL once applied (the row stays for duplicates).
    body BYTEA,
    received_at BIGINT NOT NULL,
    applied_at BIGINT
);
-- A retry of a delivery kept here (applied or not) is a duplicate; a
-- delivery without an id never is.
CREATE UNIQUE INDEX intake_delivery ON intake (source, delivery_id)
    WHERE delivery_id IS NOT NULL;
CREATE INDEX intake_unapplied ON intake (id) WHERE applied_at IS NULL;
CREATE INDEX intake_applied ON intake (applied_at) WHERE applied_at IS NOT NULL;

-- Rights that one worker at a time holds, until `expires_at` unless
-- renewed: 'intake', consuming the webhook intake.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
