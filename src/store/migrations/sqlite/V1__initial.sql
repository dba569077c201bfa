CREATE TABLE processed_events (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
     CREATE TABLE journeys (customer_id TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE emails (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         key TEXT NOT NULL UNIQUE,
         customer_id TEXT NOT NULL,
         template TEXT NOT NULL,
         class TEXT NOT NULL,
         order_id TEXT,
         due_at INTEGER NOT NULL,
         fire_at INTEGER NOT NULL,
         status TEXT NOT NULL,
         reason TEXT,
         data TEXT NOT NULL,
         recipient TEXT,
         locale TEXT,
         attempts INTEGER NOT NULL DEFAULT 0,
         -- Attempts that may have been delivered (the connection broke after
         -- the message was sent): a duplicate downstream can only come from
         -- these, and carries the same Message-ID.
         ambiguous_attempts INTEGER NOT NULL DEFAULT 0,
         last_reply TEXT,
         decided_at INTEGER,
         lease_owner TEXT,
         lease_until INTEGER,
         -- When it was first handed to the mailer: retries stop max_age after.
         first_attempt_at INTEGER,
         -- The stream (file, topic partition) whose reader fires it.
         stream TEXT NOT NULL DEFAULT ''
     );
     CREATE INDEX emails_pending_fire ON emails (fire_at) WHERE status = 'pending';
     CREATE INDEX emails_pending_stream ON emails (stream, fire_at) WHERE status = 'pending';
     CREATE INDEX emails_pending_order ON emails (customer_id, order_id) WHERE status = 'pending';
     CREATE INDEX emails_sending ON emails (lease_until) WHERE status = 'sending';
     CREATE TABLE positions (source TEXT PRIMARY KEY, position TEXT NOT NULL) WITHOUT ROWID;
     -- Every status an email takes, in order: an audit trail of what was
     -- decided when (approved, cancelled, sent...).
     CREATE TABLE email_log (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         email_id INTEGER NOT NULL,
         status TEXT NOT NULL,
         at INTEGER NOT NULL
     );
     CREATE INDEX email_log_email ON email_log (email_id);
     CREATE TRIGGER email_log_insert AFTER INSERT ON emails BEGIN
         INSERT INTO email_log (email_id, status, at)
         VALUES (NEW.id, NEW.status, CAST(unixepoch('subsec') * 1000 AS INTEGER));
     END;
     CREATE TRIGGER email_log_update AFTER UPDATE OF status ON emails
     WHEN NEW.status IS NOT OLD.status BEGIN
         INSERT INTO email_log (email_id, status, at)
         VALUES (NEW.id, NEW.status, CAST(unixepoch('subsec') * 1000 AS INTEGER));
     END;
     -- Small settings the workers sharing a store must agree on.
     CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
     CREATE TABLE suppressed_addresses (
         address TEXT PRIMARY KEY, reason TEXT NOT NULL, at INTEGER NOT NULL
     ) WITHOUT ROWID;