-- What each applied event contained (a digest of it as decoded), to tell a
-- reused event id from a redelivery. NULL for events applied before.
ALTER TABLE processed_events ADD COLUMN digest TEXT;
