-- The shop figures (the histograms segments compare a customer with) are
-- kept as a base, meta's 'shop_stats', plus the changes transactions made
-- since, a row each: a batch of events writes what it changed without
-- locking anything, so several workers' batches no longer apply one after
-- the other. A transaction that reads many changes folds them into the
-- base, with the base's row locked (SKIP LOCKED: never waiting).
CREATE TABLE shop_stats_changes (id BIGSERIAL PRIMARY KEY, value BYTEA NOT NULL);
INSERT INTO meta (key, value) VALUES ('shop_stats', convert_to('{}', 'UTF8'))
    ON CONFLICT (key) DO NOTHING;
