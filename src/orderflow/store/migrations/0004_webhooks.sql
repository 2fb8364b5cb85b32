-- Webhook subscriptions, shared by every instance; the events still to be tried again; and a
-- short log of delivery attempts. A deliverer claims a subscription as a processor acquires an
-- order: FOR UPDATE SKIP LOCKED, then (owner, token) and a lease on the database's clock.

CREATE TABLE webhooks (
    id               text COLLATE "C" PRIMARY KEY,
    url              text        NOT NULL,
    types            text[]      NOT NULL,
    secret           text        NOT NULL,
    ordered          boolean     NOT NULL,
    created_at       timestamptz NOT NULL,
    cursor           bigint      NOT NULL,   -- events up to this seq were dealt with
    disabled_at      timestamptz,
    disabled_reason  text,
    retry_at         timestamptz,            -- the earliest retry due, if any
    owner            text,                   -- the holder of the claim, if any
    token            bigint      NOT NULL DEFAULT 0,
    lease_expires_at timestamptz             -- once released: when (least recently held first)
);
CREATE INDEX webhooks_url ON webhooks (url);

-- An event to be tried again: after the cursor for an ordered subscription (at most one),
-- anywhere before it for one that is not.
CREATE TABLE webhook_retries (
    subscription_id text COLLATE "C" NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    seq             bigint      NOT NULL,
    attempt         int         NOT NULL,   -- failed attempts so far
    due_at          timestamptz NOT NULL,
    PRIMARY KEY (subscription_id, seq)
);

-- The newest attempts of each subscription (each write trims it to 100).
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id text COLLATE "C" NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    seq             bigint           NOT NULL,
    webhook_id      text             NOT NULL,   -- the webhook-id header sent
    attempt         int              NOT NULL,
    status_code     int,
    latency_ms      double precision NOT NULL,
    error           text,
    outcome         text             NOT NULL,
    at              timestamptz      NOT NULL
);
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (subscription_id, id);
