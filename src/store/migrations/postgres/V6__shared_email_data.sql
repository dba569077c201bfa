-- The data an email is scheduled with (its trigger's part: the order, the
-- shipment...) is stored once for the emails one event schedules: a first
-- order's confirmation, welcome and win-backs carry the same order. Such
-- an email's own `data` is '' and `data_id` names the shared row; once
-- approved it holds the whole of its data (customer included) itself and
-- `data_id` is cleared.
CREATE TABLE email_data (id BIGSERIAL PRIMARY KEY, data TEXT NOT NULL);
ALTER TABLE emails ADD COLUMN data_id BIGINT;
