"""Every statement PostgresOrderStore runs, as named data (a test EXPLAINs each one).

Each changes what it changes in one statement, and appends the events of its changes, as one
batch, to the ``events`` table in that same statement (a transactional outbox: an event exists
if and only if its change committed). Data-modifying CTEs run exactly once whether or not the
final SELECT reads them; `pg_notify` is called from a CTE the final SELECT does read.
"""

from __future__ import annotations

import functools

COLUMNS = "id, customer, items, created_at, status, history, shipment"
O_COLUMNS = ", ".join("o." + column for column in COLUMNS.split(", "))
READY_CHANNEL = "orderflow_ready"
CANCEL_CHANNEL = "orderflow_cancel"
EVENTS_CHANNEL = "orderflow_events"
ABOVE_ALL_IDS = "order_g"  # sorts after every id ("g" follows the hex digits)
# Advisory locks, one of each per schema: one instance rescues at a time, and one numbers the
# events. The instances of a deployment share a schema; deployments (and tests) in the other
# schemas of a database never wait for each other (a lock keyed by a constant alone made a
# numbering in one schema answer "busy" to a numbering in another).
RESCUE_LOCK = "orderflow rescue"
SEQUENCE_LOCK = "orderflow numbering"


def _history_entry(status: str, at: str, reason: str) -> str:
    """SQL for a one-entry history array shaped as `HistoryEntry` encodes."""
    return (
        f"jsonb_build_array(jsonb_build_object('status', {status}, 'at', {at}, 'reason', {reason}))"
    )


_EVENT_COLUMNS = "type, order_id, status, previous_status, at, reason, previous_reason, data"


def _events(source: str, values: str) -> str:
    """Two CTEs (`batch`, `e`) that append an event for each row of `source` (a FROM list), all
    of them one batch (see migration 0005): `values` is a typed SELECT list over `source` of
    (type, order_id, status, previous_status, at, reason, previous_reason, data)."""
    return (
        f" batch AS (INSERT INTO event_batches (size) SELECT count(*) FROM {source}"
        "  HAVING count(*) > 0 RETURNING id),"
        f" e AS (INSERT INTO events (batch, pos, {_EVENT_COLUMNS})"
        "  SELECT batch.id, row_number() OVER (ORDER BY x.order_id), x.* FROM batch,"
        f"  (SELECT {values} FROM {source}) AS x({_EVENT_COLUMNS}))"
    )


PING = "SELECT 1"
NOTIFY = "SELECT pg_notify($1, $2)"
# Lock $1 (a name above) for this transaction, if free.
TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || ' in ' || current_schema(), 0))"

# -- orders -------------------------------------------------------------------------------------

# $1..$7 the order; $8 the shipment; $9, $10, $11 the idempotency key, fingerprint and time
# (or NULL); $12 the customer's search key.
INSERT_ORDER = (
    "WITH k AS (INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at)"
    "  SELECT $9::text, $10::text, $1, $11::timestamptz WHERE $9::text IS NOT NULL"
    "  ON CONFLICT (key) DO NOTHING RETURNING key),"
    " o AS (INSERT INTO orders (id, customer, items, created_at, status, updated_at, history,"
    "   shipment, customer_key)"
    "  SELECT $1, $2, $3::jsonb, $4, $5, $6, $7::jsonb, $8::jsonb, $12"
    "  WHERE $9::text IS NULL OR EXISTS (SELECT FROM k) RETURNING id, status, updated_at),"
    + _events(
        "o",
        "'order.submitted', id, status, NULL::text, updated_at, NULL::text, NULL::text,"
        " NULL::jsonb",
    )
    + " SELECT count(*) FROM o"
)
FIND_IDEMPOTENCY = (
    "SELECT key, fingerprint, order_id, created_at FROM idempotency_keys WHERE key = $1"
)
PRUNE_IDEMPOTENCY = (
    "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys"
    "  WHERE created_at < $1 ORDER BY created_at LIMIT $2)"
)
FIND_ORDER = f"SELECT {COLUMNS} FROM orders WHERE id = $1"


@functools.cache
def listing(status: bool, newest: bool, customer: int, tail: int, dense: bool = False) -> str:
    """A page: an id range, so a primary key range scan (or one on (status, id)), one row
    more than the page to know whether more follow. $1 the range's start, $2 the cursor
    ("" oldest first, ABOVE_ALL_IDS newest first, when there is none), $3 the range's end,
    $4 the limit, $5 the status. `customer` and `tail`: how many bounds follow (0, 1 or 2) of
    the range of customer_key (of reverse(id)) a prefix is. A tail (8 characters at least: one
    id in billions) is looked up in orders_id_reversed first, always, and what it finds
    filtered and sorted. A customer prefix is told which way to go, since a plan kept for any
    arguments cannot know how many orders it matches (with a status, such a plan read every
    match of "c" through orders_customer and sorted them: 180 ms a page at 200k orders): one
    that `search_count` found rare is looked up in orders_customer first and its matches
    (fewer than the bound) sorted; a `dense` one walks the id order, at most as many orders
    as the last argument says, and filters them by the key (see `walk_end`)."""
    where = ["id >= $1", f"id {'<' if newest else '>'} $2", "id < $3"]
    n = 4
    if status:
        where.append("status = $5")
        n = 5
    keys: list[str] = []
    for column, count in (("customer_key", customer), ("reverse(id)", tail)):
        for op in (">=", "<")[:count]:
            n += 1
            keys.append(f"{column} {op} ${n}::text")
    order = f"ORDER BY id{' DESC' if newest else ''}"
    if dense and customer and not tail:
        walked = (
            f"SELECT {COLUMNS}, customer_key FROM orders WHERE {' AND '.join(where)}"
            f" {order} LIMIT ${n + 1}"
        )
        return (
            f"SELECT {COLUMNS} FROM ({walked}) AS walked WHERE {' AND '.join(keys)}"
            f" {order} LIMIT $4"
        )
    if tail:  # the tail first; the name, if any, a filter
        where += [k for k in keys if k.startswith("customer_key")]
        keys = [k for k in keys if not k.startswith("customer_key")]
    if not keys:
        return f"SELECT {COLUMNS} FROM orders WHERE {' AND '.join(where)} {order} LIMIT $4"
    return (
        f"WITH found AS MATERIALIZED (SELECT * FROM orders WHERE {' AND '.join(keys)})"
        f" SELECT {COLUMNS} FROM found WHERE {' AND '.join(where)} {order} LIMIT $4"
    )


@functools.cache
def walk_end(status: bool, newest: bool) -> str:
    """The last order a dense search's walk reads ($1 to $3 and $5 as in `listing`, $4 the
    walk's length less one), if the range holds that many: where the next page goes on when
    a page found fewer matches than it holds, so that no page reads more than the walk
    (matches crowded into one stretch of time would leave a page to read every order back
    to them)."""
    where = ["id >= $1", f"id {'<' if newest else '>'} $2", "id < $3"]
    if status:
        where.append("status = $5")
    return (
        f"SELECT id FROM orders WHERE {' AND '.join(where)}"
        f" ORDER BY id{' DESC' if newest else ''} LIMIT 1 OFFSET $4"
    )


@functools.cache
def search_count(customer: int) -> str:
    """How many orders a customer prefix matches ($1, $2: the bounds of its key's range, as
    many as `customer`), counted no further than a bound ($n, after them): a range of
    orders_customer, at most the bound's entries (in the key's order, so that the planner
    never walks the table for a prefix its statistics say is common)."""
    where = ["customer_key >= $1::text", "customer_key < $2::text"][:customer]
    return (
        f"SELECT count(*) FROM (SELECT 1 FROM orders WHERE {' AND '.join(where)}"
        f" ORDER BY customer_key LIMIT ${customer + 1}) AS matches"
    )


SEARCH_COUNT = search_count(2)
LIST_ORDERS = listing(False, False, 0, 0)
LIST_ORDERS_BY_STATUS = listing(True, False, 0, 0)
# $1 id, $2 at. Answers the status it found when nothing was deleted. `old` locks the row it
# reads: read unlocked, it held the status from before a claim the delete then waited on, and
# the delete removed the order just claimed.
DELETE_PENDING = (
    "WITH old AS (SELECT id, status FROM orders WHERE id = $1 FOR UPDATE),"
    " d AS (DELETE FROM orders o USING old WHERE o.id = old.id AND old.status = 'pending'"
    "  RETURNING o.id),"
    + _events(
        "d",
        "'order.deleted', id, NULL::text, 'pending'::text, $2::timestamptz, NULL::text,"
        " NULL::text, NULL::jsonb",
    )
    + " SELECT old.status, (SELECT count(*) FROM d) AS deleted FROM old"
)
# One checked transition. $1 id, $2 target, $3 at, $4 history entry, $5 whether the hold goes
# on, $6 the statuses it may leave, $7/$8 the hold it must be under (or NULL), $9 event type,
# $10 reason, $11 whether to tell the holder (a cancel), $12 whether the order becomes ready.
# Answers the order before (old_*), and after when it moved.
TRANSITION = (
    "WITH old AS (SELECT id, owner, attempt, status, history->-1->>'reason' AS reason"
    "  FROM orders WHERE id = $1 FOR UPDATE),"
    " upd AS (UPDATE orders o SET status = $2, updated_at = $3, history = o.history || $4::jsonb,"
    "   owner = CASE WHEN $5 THEN o.owner END,"
    "   lease_expires_at = CASE WHEN $5 THEN o.lease_expires_at END"
    "  FROM old WHERE o.id = old.id AND old.status = ANY($6::text[])"
    "   AND ($7::text IS NULL OR (old.owner = $7 AND old.attempt = $8))"
    f"  RETURNING {O_COLUMNS}),"
    + _events(
        "upd, old",
        "$9::text, upd.id, upd.status, old.status, $3::timestamptz, $10::text,"
        " CASE WHEN old.status = 'failed' THEN old.reason END, NULL::jsonb",
    )
    + ", n AS (SELECT pg_notify(CASE WHEN $11 THEN 'orderflow_cancel' ELSE 'orderflow_ready' END,"
    "   CASE WHEN $11 THEN old.id ELSE '' END) FROM upd, old"
    "  WHERE ($11 AND old.owner IS NOT NULL) OR $12)"
    " SELECT old.status AS old_status, old.owner AS old_owner, old.attempt AS old_attempt,"
    f"  {', '.join('upd.' + c for c in COLUMNS.split(', '))}, (SELECT count(*) FROM n) AS notified"
    " FROM old LEFT JOIN upd ON true"
)
# Outcomes of many shipments, each checked against (owner $10, its token). Each order is found
# by its id (the primary key), then checked. The owner is compared with IS NOT DISTINCT FROM,
# an equality no index answers: with a plain `=`, the plan the server keeps for a prepared
# statement (the driver prepares every statement; after five runs the server plans it once for
# any arguments) walked the owner's held orders and, for each, the whole batch: a batch of 500
# compared 250,000 pairs and cost 150 µs of the database's CPU an order (about 30 now; at 64,
# 35 µs then and 17 now).
# (A status condition instead let the planner, its statistics taken before a burst of claims,
# scan every processing order for each batch.)
WRITE_OUTCOMES = (
    "WITH c AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[],"
    "   $5::jsonb[], $6::bool[], $7::text[], $8::text[], $9::jsonb[])"
    "  AS c(id, token, target, at, entry, keep, type, reason, shipment)),"
    " upd AS (UPDATE orders o SET status = c.target, updated_at = c.at,"
    "   history = o.history || c.entry, shipment = coalesce(c.shipment, o.shipment),"
    "   owner = CASE WHEN c.keep THEN o.owner END,"
    "   lease_expires_at = CASE WHEN c.keep THEN o.lease_expires_at END"
    "  FROM c WHERE o.id = c.id AND o.owner IS NOT DISTINCT FROM $10 AND o.attempt = c.token"
    f"  RETURNING {O_COLUMNS}, c.type, c.at, c.reason, c.keep),"
    + _events("upd", "type, id, status, 'processing'::text, at, reason, NULL::text, shipment")
    + ", n AS (SELECT pg_notify('orderflow_ready', '')"
    "  WHERE EXISTS (SELECT FROM upd WHERE type = 'order.released' AND status = 'processing'))"
    f" SELECT {COLUMNS}, (SELECT count(*) FROM n) AS notified FROM upd"
)
# Claim: the oldest pending orders above id $5 and below id $3, through the partial index
# orders_pending. $1 at, $2 limit, $4 history entry. Answers how many, and the highest id.
CLAIM = (
    "WITH picked AS (SELECT id FROM orders WHERE status = 'pending' AND id < $3 AND id > $5"
    "  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " upd AS (UPDATE orders o SET status = 'processing', updated_at = $1,"
    "   history = o.history || $4::jsonb FROM picked WHERE o.id = picked.id RETURNING o.id),"
    + _events(
        "upd",
        "'order.processing', id, 'processing'::text, 'pending'::text, $1::timestamptz,"
        " NULL::text, NULL::text, NULL::jsonb",
    )
    + ", n AS (SELECT pg_notify('orderflow_ready', '') WHERE EXISTS (SELECT FROM upd))"
    " SELECT (SELECT count(*) FROM upd) AS claimed, (SELECT max(id) FROM upd) AS last,"
    " (SELECT count(*) FROM n) AS notified"
)
# Hand ready orders to owner $1 under new tokens, with a lease of $3 seconds.
ACQUIRE = (
    "WITH picked AS (SELECT id FROM orders WHERE status = 'processing' AND owner IS NULL"
    "  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " UPDATE orders o SET owner = $1, attempt = o.attempt + 1,"
    "  lease_expires_at = now() + make_interval(secs => $3)"
    f" FROM picked WHERE o.id = picked.id RETURNING {O_COLUMNS}, o.attempt"
)
# Renew what owner $1 holds under the tokens it gives ($2 ids, $3 tokens) for $4 seconds, and
# hand back, at $5 (text $6), what it holds without knowing. Answers renewed ids (true) and
# handed back ones (false).
# Each order by its id, then checked (see WRITE_OUTCOMES); what is handed back is what the
# owner holds beyond what was renewed, found through a hash of those (NOT EXISTS over the
# given holds compared each held order with every hold in a generic plan).
RENEW = (
    "WITH mine AS (SELECT * FROM unnest($2::text[], $3::int[]) AS m(id, token)),"
    " renewed AS (UPDATE orders o SET lease_expires_at = now() + make_interval(secs => $4)"
    "  FROM mine WHERE o.id = mine.id AND o.owner IS NOT DISTINCT FROM $1"
    "   AND o.attempt = mine.token"
    "  RETURNING o.id),"
    " stray AS (UPDATE orders o SET owner = NULL, lease_expires_at = NULL, updated_at = $5,"
    "   history = o.history || "
    + _history_entry("'processing'", "$6::text", "'handed back: ' || $1 || ' lost track of it'")
    + "  WHERE o.owner = $1 AND o.id NOT IN (SELECT id FROM renewed)"
    "  RETURNING o.id),"
    + _events(
        "stray",
        "'order.released', id, 'processing'::text, 'processing'::text, $5::timestamptz,"
        " 'handed back: ' || $1 || ' lost track of it', NULL::text, NULL::jsonb",
    )
    + ", n AS (SELECT pg_notify('orderflow_ready', '') WHERE EXISTS (SELECT FROM stray))"
    " SELECT id, true AS renewed FROM renewed UNION ALL SELECT id, false FROM stray"
    " UNION ALL SELECT NULL, NULL FROM n"
)
# Make ready again what holders whose lease ran out held; $1 at, $2 at as text. Leases are
# measured on the database's clock alone: `at` only dates the history.
RESCUE = (
    "WITH lost AS (SELECT id, owner FROM orders"
    "  WHERE owner IS NOT NULL AND lease_expires_at < now() FOR UPDATE SKIP LOCKED),"
    " upd AS (UPDATE orders o SET owner = NULL, lease_expires_at = NULL, updated_at = $1,"
    "   history = o.history || "
    + _history_entry(
        "'processing'", "$2::text", "'rescued: the lease of ' || lost.owner || ' ran out'"
    )
    + "  FROM lost WHERE o.id = lost.id RETURNING o.id, lost.owner),"
    + _events(
        "upd",
        "'order.rescued', id, 'processing'::text, 'processing'::text, $1::timestamptz,"
        " 'rescued: the lease of ' || owner || ' ran out', NULL::text, NULL::jsonb",
    )
    + ", n AS (SELECT pg_notify('orderflow_ready', '') WHERE EXISTS (SELECT FROM upd))"
    " SELECT (SELECT count(*) FROM upd) AS rescued, (SELECT count(*) FROM n) AS notified"
)
# Hand back all that owner $3 holds, at $1 ($2 as text).
RETIRE = (
    "WITH upd AS (UPDATE orders o SET owner = NULL, lease_expires_at = NULL, updated_at = $1,"
    "   history = o.history || "
    + _history_entry("'processing'", "$2::text", "'handed back: ' || $3::text || ' stopped'")
    + "  WHERE owner = $3 RETURNING o.id),"
    + _events(
        "upd",
        "'order.released', id, 'processing'::text, 'processing'::text, $1::timestamptz,"
        " 'handed back: ' || $3::text || ' stopped', NULL::text, NULL::jsonb",
    )
    + ", n AS (SELECT pg_notify('orderflow_ready', '') WHERE EXISTS (SELECT FROM upd))"
    " SELECT (SELECT count(*) FROM upd) AS retired, (SELECT count(*) FROM n) AS notified"
)
# An operator's bulk action, one source status ($1) at a time: walk at most $9 orders in
# [$2, $3) after $4 through (status, id), move up to $5 of those whose latest reason contains
# $6 (or all when NULL) to $7, with history entry $8 at $10; $11 event type, $12 reason,
# $13 whether it ends a hold (cancel: the holder is told). Answers the ids moved and where the
# walk stopped.
# A bulk action's batch: orders of status $1 in [$2, $3) after $4 (a walk of at most $9),
# of customers whose search key starts with $14, whose latest reason contains $6: $5 at most.
_STRETCH = (
    "WITH stretch AS (SELECT id, history->-1->>'reason' AS reason, customer_key FROM orders"
    "  WHERE status = $1 AND id >= $2 AND id < $3 AND id > $4 ORDER BY id LIMIT $9),"
    " wanted AS (SELECT id FROM stretch"
    "  WHERE ($6::text IS NULL OR strpos(lower(reason), lower($6::text)) > 0)"
    "   AND ($14::text IS NULL OR starts_with(customer_key, $14::text))"
    "  ORDER BY id LIMIT $5),"
)
_RESUME = (
    " UNION ALL SELECT NULL, CASE WHEN (SELECT count(*) FROM wanted) = $5"
    "   THEN (SELECT max(id) FROM wanted) WHEN (SELECT count(*) FROM stretch) = $9"
    "   THEN (SELECT max(id) FROM stretch) END"
)
TRANSITION_MATCHING = (
    _STRETCH
    + " picked AS (SELECT o.id, o.owner, s.reason FROM orders o JOIN wanted w ON o.id = w.id"
    "  JOIN stretch s ON s.id = o.id WHERE o.status = $1 FOR UPDATE OF o SKIP LOCKED),"
    " upd AS (UPDATE orders o SET status = $7, updated_at = $10,"
    "   history = o.history || $8::jsonb, owner = NULL, lease_expires_at = NULL"
    "  FROM picked WHERE o.id = picked.id RETURNING o.id, picked.owner, picked.reason),"
    + _events(
        "upd",
        "$11::text, id, $7::text, $1::text, $10::timestamptz, $12::text,"
        " CASE WHEN $1 = 'failed' THEN reason END, NULL::jsonb",
    )
    + ", n AS (SELECT pg_notify('orderflow_cancel', id) FROM upd"
    "  WHERE $13 AND owner IS NOT NULL)"
    " SELECT id, NULL AS walked_to FROM upd" + _RESUME + " FROM (SELECT count(*) FROM n) AS told"
)
# The same walk, changing nothing (a dry run): the ids it would move, and where to go on; the
# arguments of TRANSITION_MATCHING, those of the change ($7, $8, $10..$13) unread.
TRANSITION_MATCHING_DRY = (
    _STRETCH
    + " x AS (SELECT $7::text, $8::jsonb, $10::timestamptz, $11::text, $12::text, $13::bool)"
    " SELECT id, NULL AS walked_to FROM wanted" + _RESUME
)

# -- counts and the event log -------------------------------------------------------------------

STATUS_COUNTS = "SELECT status, count FROM status_counts"
OLDEST_PENDING = "SELECT min(id) FROM orders WHERE status = 'pending'"  # orders_pending
FAILED_REASONS = (
    "SELECT reason, count FROM failure_counts WHERE count > 0 ORDER BY count DESC, reason LIMIT $1"
)
# Number the batches of events of committed transactions ($1 events at most, and at least one
# batch), oldest batch first, and fold their changes into the counts (by status, failed orders by
# reason, orders submitted, shipped and failed by minute: binned by date_bin, a subtraction, where
# date_trunc's conversion of each time to a calendar doubled the minutes' cost; PostgreSQL 14 or
# later); one instance at a time (the caller holds SEQUENCE_LOCK). Only committed batches are
# visible here, and numbers only grow: a batch that commits later is numbered later, after every
# number handed out before, so a reader following seq misses none. Within a round, id order (the
# order of insertion) keeps an order's events in the order they happened: a change is made after
# the one before it committed. A batch's seq is its last event's. Every instance is told (NOTIFY,
# at commit) the last seq numbered. Answers how many events were numbered.
SEQUENCE_EVENTS = (
    "WITH todo AS (SELECT id, size, sum(size) OVER (ORDER BY id) AS upto FROM event_batches"
    "  WHERE seq IS NULL ORDER BY id LIMIT $1),"
    " chosen AS (SELECT id, upto FROM todo WHERE upto <= $1 OR upto = size),"
    " numbered AS (SELECT id, (SELECT greatest(max(seq), (SELECT pruned_through"
    "   FROM event_horizon)) FROM event_batches) + upto AS seq FROM chosen),"
    " upd AS (UPDATE event_batches b SET seq = n.seq FROM numbered n WHERE b.id = n.id"
    "  RETURNING b.seq, b.size),"
    " todo_events AS (SELECT e.type, e.at, e.status, e.previous_status, e.reason,"
    "   e.previous_reason"
    "  FROM chosen c JOIN events e ON e.batch = c.id),"
    " moves AS (SELECT status AS s, 1 AS d FROM todo_events WHERE status IS NOT NULL"
    "  UNION ALL SELECT previous_status, -1 FROM todo_events WHERE previous_status IS NOT NULL),"
    " counted AS (INSERT INTO status_counts AS c (status, count)"
    "  SELECT s, sum(d) FROM moves GROUP BY s HAVING sum(d) <> 0"
    "  ON CONFLICT (status) DO UPDATE SET count = c.count + EXCLUDED.count),"
    " failures AS (SELECT coalesce(reason, '') AS r, 1 AS d FROM todo_events"
    "  WHERE status = 'failed'"
    "  UNION ALL SELECT coalesce(previous_reason, ''), -1 FROM todo_events"
    "  WHERE previous_status = 'failed'),"
    " failed AS (INSERT INTO failure_counts AS f (reason, count)"
    "  SELECT r, sum(d) FROM failures GROUP BY r HAVING sum(d) <> 0"
    "  ON CONFLICT (reason) DO UPDATE SET count = f.count + EXCLUDED.count),"
    " minutes AS (INSERT INTO order_minutes AS m (minute, submitted, shipped, failed)"
    "  SELECT date_bin('1 minute', at, timestamptz '2000-01-01Z'),"
    "   count(*) FILTER (WHERE type = 'order.submitted'),"
    "   count(*) FILTER (WHERE type = 'order.shipped'),"
    "   count(*) FILTER (WHERE type = 'order.failed')"
    "  FROM todo_events WHERE type IN ('order.submitted', 'order.shipped', 'order.failed')"
    "  GROUP BY 1 ON CONFLICT (minute) DO UPDATE SET submitted = m.submitted + EXCLUDED.submitted,"
    "   shipped = m.shipped + EXCLUDED.shipped, failed = m.failed + EXCLUDED.failed),"
    " n AS (SELECT pg_notify('orderflow_events', max(seq)::text) FROM upd HAVING count(*) > 0)"
    " SELECT coalesce(sum(size), 0) AS numbered, max(seq) AS last,"
    " (SELECT count(*) FROM n) AS notified FROM upd"
)
# The events after seq $1, at most $2: the batches that hold them (through their seq index, no
# more batches than needed for $2 events), then their events (through the primary key).
READ_EVENTS = (
    "SELECT b.seq - b.size + e.pos AS seq, e.type, e.order_id, e.status, e.at, e.reason, e.data"
    " FROM (SELECT id, seq, size FROM (SELECT id, seq, size,"
    "   sum(least(size, seq - $1)) OVER (ORDER BY seq) - least(size, seq - $1) AS before"
    "   FROM event_batches WHERE seq > $1 ORDER BY seq LIMIT $2) AS w WHERE before < $2) AS b"
    " JOIN events e ON e.batch = b.id AND e.pos > b.size - (b.seq - $1)"
    " ORDER BY b.seq, e.pos LIMIT $2"
)
PRUNED_THROUGH = "SELECT pruned_through FROM event_horizon"
EVENT_HORIZON = (
    "SELECT pruned_through,"
    " (SELECT coalesce(max(seq), pruned_through) FROM event_batches) AS last FROM event_horizon"
)
# Drop the oldest numbered events, at most $3 of them: those dated before $1, and those beyond
# the newest $2 (found in seq order through the batches' seq index, deleted through the primary
# key), and the batches left empty.
PRUNE_EVENTS = (
    "WITH top AS (SELECT coalesce(max(seq), 0) AS last FROM event_batches),"
    " doomed AS (SELECT e.batch, e.pos, b.seq - b.size + e.pos AS seq"
    "  FROM event_batches b JOIN events e ON e.batch = b.id"
    "  WHERE b.seq IS NOT NULL"
    "   AND (e.at < $1 OR b.seq - b.size + e.pos <= (SELECT last FROM top) - $2)"
    "  ORDER BY b.seq, e.pos LIMIT $3),"
    " gone AS (DELETE FROM events e USING unnest(ARRAY(SELECT batch FROM doomed ORDER BY seq),"
    "   ARRAY(SELECT pos FROM doomed ORDER BY seq), ARRAY(SELECT seq FROM doomed ORDER BY seq))"
    "   AS d(batch, pos, seq) WHERE e.batch = d.batch AND e.pos = d.pos RETURNING d.seq),"
    " emptied AS (DELETE FROM event_batches b"
    "  WHERE b.id = ANY(ARRAY(SELECT DISTINCT batch FROM doomed))"
    "   AND (SELECT count(*) FROM doomed WHERE batch = b.id)"
    "   = (SELECT count(*) FROM events e WHERE e.batch = b.id)),"
    " moved AS (UPDATE event_horizon SET pruned_through = greatest(pruned_through,"
    "   (SELECT max(seq) FROM gone)) WHERE EXISTS (SELECT FROM gone))"
    " SELECT count(*) FROM gone"
)

# -- history and instances ----------------------------------------------------------------------

ORDER_MINUTES = (
    "SELECT minute, submitted, shipped, failed FROM order_minutes"
    " WHERE minute >= date_trunc('minute', $1::timestamptz, 'UTC')"
    " AND (submitted > 0 OR shipped > 0 OR failed > 0) ORDER BY minute"
)
PRUNE_MINUTES = (
    "DELETE FROM order_minutes WHERE minute < date_trunc('minute', $1::timestamptz, 'UTC')"
)
# $1 name, $2 started at, $3 at, $4 held, $5 in flight, $6 live until.
HEARTBEAT = (
    "INSERT INTO instances (name, started_at, last_heartbeat, held, in_flight, live_until,"
    " stopped) VALUES ($1, $2, $3, $4, $5, $6, false)"
    " ON CONFLICT (name) DO UPDATE SET started_at = EXCLUDED.started_at,"
    " last_heartbeat = EXCLUDED.last_heartbeat, held = EXCLUDED.held,"
    " in_flight = EXCLUDED.in_flight, live_until = EXCLUDED.live_until, stopped = false"
)
STOP_INSTANCE = "UPDATE instances SET stopped = true WHERE name = $1"
INSTANCES = (
    "SELECT name, started_at, last_heartbeat, held, in_flight, live_until, stopped FROM instances"
)
PRUNE_INSTANCES = "DELETE FROM instances WHERE last_heartbeat < $1"
