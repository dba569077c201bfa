-- The audit trail starts at an email's first decision: its row in `emails`
-- is its scheduling, and a 'pending' row for every email scheduled (four a
-- first order) was written for nothing. SQLite's V9, which drops its
-- trigger on insert and logs an email inserted already decided in code.
DROP TRIGGER IF EXISTS email_log_insert ON emails;
CREATE TRIGGER email_log_insert AFTER INSERT ON emails
    FOR EACH ROW WHEN (NEW.status <> 'pending')
    EXECUTE FUNCTION email_log_status();
