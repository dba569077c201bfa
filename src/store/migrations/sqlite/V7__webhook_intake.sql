CREATE TABLE intake (
         -- AUTOINCREMENT: an id is never reused once purged.
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         source TEXT NOT NULL,
         delivery_id TEXT,
         -- The request's headers: JSON [[name, value], ...].
         headers TEXT,
         -- NULL once applied: the row stays for the duplicates only.
         body BLOB,
         received_at INTEGER NOT NULL,
         applied_at INTEGER
     );
     CREATE UNIQUE INDEX intake_delivery ON intake (source, delivery_id)
         WHERE delivery_id IS NOT NULL;
     CREATE INDEX intake_unapplied ON intake (id) WHERE applied_at IS NULL;
     CREATE INDEX intake_applied ON intake (applied_at) WHERE applied_at IS NOT NULL;
     CREATE TABLE leases (
         name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL
     ) WITHOUT ROWID;