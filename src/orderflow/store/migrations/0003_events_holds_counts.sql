-- The shipment's result, idempotency keys, the event log, and counts kept as orders move.

ALTER TABLE orders ADD COLUMN shipment jsonb;

-- Held orders are found by holder alone (orders_owner): they are few (each instance holds at most
-- two per worker), and a second partial index with the same predicate let the planner, with
-- statistics taken before a burst of claims, take the wrong one for a holder's writes.
DROP INDEX orders_lease;

-- A submit made with an Idempotency-Key: written in the same statement as its order.
CREATE TABLE idempotency_keys (
    key         text COLLATE "C" PRIMARY KEY,
    fingerprint text        NOT NULL,
    order_id    text        NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The event log (a transactional outbox): every statement that changes an order appends its
-- events in the same statement. `seq`, the public order, is given once the event committed
-- (see SEQUENCE_EVENTS), so readers never see a gap filled in later.
CREATE TABLE events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq             bigint UNIQUE,
    type            text        NOT NULL,
    order_id        text        NOT NULL,
    status          text,
    previous_status text,
    at              timestamptz NOT NULL,
    reason          text,
    previous_reason text,
    data            jsonb
);
CREATE INDEX events_unsequenced ON events (id) WHERE seq IS NULL;

-- Orders by status and failed orders by reason, folded in from the events as they are
-- numbered: reading them is a few rows, never a count over the orders.
CREATE TABLE status_counts (
    status text PRIMARY KEY,
    count  bigint NOT NULL
);
CREATE TABLE failure_counts (
    reason text PRIMARY KEY,
    count  bigint NOT NULL
);
INSERT INTO status_counts (status, count)
    SELECT status, count(*) FROM orders GROUP BY status;
INSERT INTO failure_counts (reason, count)
    SELECT coalesce(history->-1->>'reason', ''), count(*) FROM orders
    WHERE status = 'failed' GROUP BY 1;

-- How far the event log was pruned: a reader asking for what comes after an earlier event
-- is told it is gone, instead of silently missing events.
CREATE TABLE event_horizon (
    id             int PRIMARY KEY CHECK (id = 1),
    pruned_through bigint NOT NULL
);
INSERT INTO event_horizon (id, pruned_through) VALUES (1, 0);
