-- Orders submitted, shipped and failed per minute, folded in from the events as they are
-- numbered, as the counts by status are (see SEQUENCE_EVENTS): one upsert a minute per round,
-- nothing more in the statements that move orders. Kept a day and an hour.
CREATE TABLE order_minutes (
    minute    timestamptz PRIMARY KEY,  -- the minute's start
    submitted bigint NOT NULL,
    shipped   bigint NOT NULL,
    failed    bigint NOT NULL
);

-- The processors that beat: registered by their first heartbeat, stopped by a clean stop,
-- kept an hour after their last beat.
CREATE TABLE instances (
    name           text COLLATE "C" PRIMARY KEY,
    started_at     timestamptz NOT NULL,
    last_heartbeat timestamptz NOT NULL,
    held           int         NOT NULL,
    in_flight      int         NOT NULL,
    live_until     timestamptz NOT NULL,
    stopped        boolean     NOT NULL DEFAULT false
);

-- The minutes of the events numbered already (those not numbered yet are folded in as they
-- are), as far back as they are kept and the counts are.
INSERT INTO order_minutes (minute, submitted, shipped, failed)
    SELECT date_trunc('minute', e.at, 'UTC'),
           count(*) FILTER (WHERE e.type = 'order.submitted'),
           count(*) FILTER (WHERE e.type = 'order.shipped'),
           count(*) FILTER (WHERE e.type = 'order.failed')
    FROM events e JOIN event_batches b ON b.id = e.batch
    WHERE b.seq IS NOT NULL AND e.at > now() - interval '25 hours'
      AND e.type IN ('order.submitted', 'order.shipped', 'order.failed')
    GROUP BY 1;
