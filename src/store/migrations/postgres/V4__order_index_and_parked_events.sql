-- Follow-up events that name their order only. Real feeds often send
-- shipments, returns and refunds with the order id and no customer id:
-- the store keeps which customer placed each order, and the events that
-- name an order not placed yet wait here for it.
--
-- PostgreSQL only: SQLite's migration does the same with its own JSON
-- functions (src/store/sqlite.rs).

-- Written when an order.placed is applied; the first customer to place an
-- order keeps it.
CREATE TABLE order_customers (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL
);

-- Filled from the journeys already stored: each one keeps its customer's
-- orders, and an order placed has a `placed_at` (one known only from its
-- later events has none). `json`, not `jsonb`: only the order ids and their
-- times are read, and `jsonb` would refuse a state holding \u0000. An order
-- id in two journeys (a shop's mistake) goes to the first customer by id.
INSERT INTO order_customers (order_id, customer_id)
SELECT o.key, j.customer_id
FROM journeys j, json_each(j.state::json -> 'orders') AS o
WHERE o.value ->> 'placed_at' IS NOT NULL
ORDER BY j.customer_id
ON CONFLICT (order_id) DO NOTHING;

-- An event naming no customer and an order not placed yet, until the order
-- comes (then applied in its transaction) or `expires_at` passes (then
-- dead-lettered with `raw`, `key`, `source` and `coordinates`, as it came).
CREATE TABLE parked_events (
    event_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- The event as decoded (JSON as text): what is applied.
    event TEXT NOT NULL,
    raw BYTEA NOT NULL,
    key BYTEA,
    source TEXT NOT NULL,
    coordinates TEXT NOT NULL,
    -- The stream (file, topic partition) whose reader gives up on it.
    stream TEXT NOT NULL,
    -- Arrival order, for events of the same time.
    seq BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX parked_events_order ON parked_events (order_id);
CREATE INDEX parked_events_expiry ON parked_events (expires_at);
CREATE INDEX parked_events_stream ON parked_events (stream, expires_at);
