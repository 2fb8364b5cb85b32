-- Orders, one row each. Ids sort by creation time (see domain.new_order_id), so the primary
-- key answers time ranges; "C" collation keeps byte order.
CREATE TABLE orders (
    id               text COLLATE "C" PRIMARY KEY,
    customer         text        NOT NULL,
    items            jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    status           text        NOT NULL,
    updated_at       timestamptz NOT NULL,
    history          jsonb       NOT NULL,
    owner            text,                   -- the processor holding it, while processing
    attempt          integer     NOT NULL DEFAULT 0,
    lease_expires_at timestamptz             -- the hold lapses then unless renewed
);

-- Listing by status and time.
CREATE INDEX orders_status_id ON orders (status, id);
-- Ready orders: claimed by a trigger, held by nobody yet.
CREATE INDEX orders_ready ON orders (id) WHERE status = 'processing' AND owner IS NULL;
-- Held orders: by holder (heartbeat, retire) and by lease (rescue).
CREATE INDEX orders_owner ON orders (owner) WHERE owner IS NOT NULL;
CREATE INDEX orders_lease ON orders (lease_expires_at) WHERE owner IS NOT NULL;
