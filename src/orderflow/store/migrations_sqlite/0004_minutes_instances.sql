-- Orders submitted, shipped and failed per minute, moved in the transaction of each change
-- (one row a minute, however many changes a transaction makes in it); kept a day and an hour.
CREATE TABLE order_minutes (
    minute    INTEGER PRIMARY KEY,      -- minutes since 1970, UTC
    submitted INTEGER NOT NULL,
    shipped   INTEGER NOT NULL,
    failed    INTEGER NOT NULL
);

-- The processors that beat: registered by their first heartbeat, stopped by a clean stop,
-- kept an hour after their last beat. Times are microseconds since 1970, UTC.
CREATE TABLE instances (
    name           TEXT PRIMARY KEY,
    started_at     INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    held           INTEGER NOT NULL,
    in_flight      INTEGER NOT NULL,
    live_until     INTEGER NOT NULL,
    stopped        INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The minutes of the events kept, as far back as the counts are (times in microseconds).
INSERT INTO order_minutes (minute, submitted, shipped, failed)
    SELECT at / 60000000, sum(type = 'order.submitted'), sum(type = 'order.shipped'),
           sum(type = 'order.failed')
    FROM events
    WHERE type IN ('order.submitted', 'order.shipped', 'order.failed')
      AND at > (CAST(strftime('%s', 'now') AS INTEGER) - 25 * 3600) * 1000000
    GROUP BY 1;
