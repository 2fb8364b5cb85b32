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
