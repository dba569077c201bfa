CREATE TABLE order_customers (
         order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL
     ) WITHOUT ROWID;
     -- Every order placed is in its customer's journey, with a placed_at.
     -- An order id in two journeys (a shop's mistake) goes to the first
     -- customer by id.
     INSERT INTO order_customers (order_id, customer_id)
     SELECT o.key, j.customer_id
     FROM journeys j, json_each(j.state, '$.orders') AS o
     WHERE json_extract(o.value, '$.placed_at') IS NOT NULL
     ORDER BY j.customer_id
     ON CONFLICT (order_id) DO NOTHING;
     CREATE TABLE parked_events (
         event_id TEXT PRIMARY KEY,
         order_id TEXT NOT NULL,
         occurred_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL,
         event TEXT NOT NULL,
         raw BLOB NOT NULL,
         key BLOB,
         source TEXT NOT NULL,
         coordinates TEXT NOT NULL,
         stream TEXT NOT NULL,
         -- Arrival order, for events of the same time.
         seq INTEGER NOT NULL
     );
     CREATE INDEX parked_events_order ON parked_events (order_id);
     CREATE INDEX parked_events_expiry ON parked_events (expires_at);
     CREATE INDEX parked_events_stream ON parked_events (stream, expires_at);