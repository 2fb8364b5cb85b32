-- Orders, one row each, kept as their JSON in two parts, as the in-memory store keeps them
-- (see memory_rows.py): `head` written once at submission, `tail` by each change (NULL: as
-- submitted, or as claimed: then `claim` holds the claim's time as JSON). Ids sort by creation
-- time (see domain.new_order_id), so the primary key answers time ranges; the table is the
-- primary key's B-tree itself (WITHOUT ROWID): a range of 100 is one walk of adjacent rows.
CREATE TABLE orders (
    id     TEXT PRIMARY KEY,
    status TEXT    NOT NULL,
    head   BLOB    NOT NULL,
    tail   BLOB,
    claim  BLOB,
    reason TEXT,                        -- of the latest history entry
    owner  TEXT,                        -- the processor holding it, while processing
    token  INTEGER NOT NULL DEFAULT 0   -- the hold's fencing token
) WITHOUT ROWID;

-- Listing by status and time; a trigger claims the oldest pending orders through it, and a
-- bulk action walks one status. (A priority and a not-before time, when they come, are columns
-- of this index before `id`: (status, priority DESC, id), the not-before a condition on it.)
CREATE INDEX orders_status ON orders (status, id);
-- Ready orders: claimed, held by nobody yet; acquired oldest first.
CREATE INDEX orders_ready ON orders (id) WHERE status = 'processing' AND owner IS NULL;
-- Held orders, by holder (heartbeat, retire).
CREATE INDEX orders_held ON orders (owner) WHERE owner IS NOT NULL;

-- A submit made with an Idempotency-Key: written in the same transaction as its order.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    order_id    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL        -- microseconds since 1970, UTC
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The event log, appended in the transaction of each change. One writer commits in order, so
-- the seq given at insertion is already commit order: no gap ever fills in later.
-- AUTOINCREMENT: a seq is never given twice, even once every event was pruned.
CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    type     TEXT    NOT NULL,
    order_id TEXT    NOT NULL,
    status   TEXT,
    at       INTEGER NOT NULL,          -- microseconds since 1970, UTC
    reason   TEXT,
    data     BLOB                       -- JSON
);

-- Orders by status and failed orders by reason, moved in the transaction of each change:
-- reading them is a few rows, never a count over the orders.
CREATE TABLE status_counts (
    status TEXT PRIMARY KEY,
    count  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO status_counts (status, count) VALUES
    ('pending', 0), ('processing', 0), ('shipped', 0), ('cancelled', 0), ('failed', 0);
CREATE TABLE failure_counts (
    reason TEXT PRIMARY KEY,
    count  INTEGER NOT NULL
) WITHOUT ROWID;

-- pruned_through: events up to this seq were pruned; token: the last fencing token handed out;
-- ping: written by a readiness check during an outage (a commit that succeeds ends it).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('pruned_through', 0), ('token', 0), ('ping', 0);
