-- Webhook subscriptions, the events still to be tried again, and a short log of delivery
-- attempts. Times are microseconds since 1970, UTC; leases on the service's clock.
CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    url              TEXT    NOT NULL,
    types            TEXT    NOT NULL,  -- JSON array of event types; empty: every type
    secret           TEXT    NOT NULL,
    ordered          INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    cursor           INTEGER NOT NULL,  -- events up to this seq were dealt with
    disabled_at      INTEGER,
    disabled_reason  TEXT,
    retry_at         INTEGER,           -- the earliest retry due, if any
    owner            TEXT,              -- the holder of the claim, if any
    token            INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER            -- once released: when (least recently held first)
) WITHOUT ROWID;
CREATE INDEX webhooks_url ON webhooks (url, created_at);

CREATE TABLE webhook_retries (
    subscription_id TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,   -- failed attempts so far
    due_at          INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, seq)
) WITHOUT ROWID;

-- The newest attempts of each subscription (each write trims it to 100).
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    webhook_id      TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    status_code     INTEGER,
    latency_ms      REAL    NOT NULL,
    error           TEXT,
    outcome         TEXT    NOT NULL,
    at              INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (subscription_id, id);
