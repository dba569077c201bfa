-- The audit trail starts at an email's first decision: its row in `emails`
-- is its scheduling. A trigger on insert wrote a 'pending' row for every
-- email scheduled (four a first order), and any trigger on an insert makes
-- SQLite keep a statement journal for it; an email inserted already
-- decided (a cap, a holdout) is logged by the store's code instead.
DROP TRIGGER IF EXISTS email_log_insert;
