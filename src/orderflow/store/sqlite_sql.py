"""Every statement SqliteOrderStore and its parts run, as named data, and the pragmas each
connection starts with (a test asks SQLite for the plan of each read and write that must use
an index).

A change is a few statements in the writer's transaction (see sqlite_db): each reads the row,
lets the domain decide, writes the row, appends the event and moves the counts; they commit
together or not at all.
"""

from __future__ import annotations

import functools

from orderflow.domain import OrderStatus

# -- connections ---------------------------------------------------------------------------------

# The writer: WAL (readers never wait for it), each commit synced as `synchronous` says (FULL:
# on the disk before COMMIT returns; NORMAL: survives the process, may lose the last commits on
# power loss). The WAL is checkpointed every 1000 pages (SQLite's default) and cut back to
# 64 MiB after a checkpoint; freed pages are reused, so the file stays the size of its peak.
WRITER_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = {synchronous}",
    "PRAGMA journal_size_limit = 67108864",
    "PRAGMA wal_autocheckpoint = 1000",
    "PRAGMA cache_size = -32768",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = OFF",
)
READER_PRAGMAS = (
    "PRAGMA query_only = ON",
    "PRAGMA cache_size = -16384",
    "PRAGMA busy_timeout = 5000",
)
SYNCHRONOUS_OF = "PRAGMA synchronous"  # 2: FULL, 1: NORMAL
JOURNAL_MODE = "PRAGMA journal_mode"
QUICK_CHECK = "PRAGMA quick_check(1)"

ABOVE_ALL_IDS = "order_g"  # sorts after every id ("g" follows the hex digits)
PROCESSING = OrderStatus.PROCESSING.value
PENDING = OrderStatus.PENDING.value

# -- orders -----------------------------------------------------------------------------------

INSERT_ORDER = (
    "INSERT INTO orders (id, status, head, tail, claim, reason, customer_key, id_reversed)"
    " VALUES (?, ?, ?, ?, NULL, ?, ?, ?)"
)
MAX_ROWS = 500  # rows one multi-row statement writes at most


@functools.cache
def insert_orders(count: int) -> str:
    """INSERT_ORDER for `count` orders at once (one trip into SQLite, not one a row)."""
    return (
        INSERT_ORDER.partition(" VALUES ")[0]
        + " VALUES "
        + ", ".join(["(?, ?, ?, ?, NULL, ?, ?, ?)"] * count)
    )


@functools.cache
def insert_events(count: int) -> str:
    """INSERT_EVENT for `count` events at once."""
    return (
        INSERT_EVENT.partition(" VALUES ")[0]
        + " VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?)"] * count)
    )


INSERT_KEY = (
    "INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at) VALUES (?, ?, ?, ?)"
)
FIND_KEY = "SELECT key, fingerprint, order_id, created_at FROM idempotency_keys WHERE key = ?"
PRUNE_KEYS = (
    "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys"
    " WHERE created_at < ? ORDER BY created_at LIMIT ?)"
)
# What a change needs of a row: the order as JSON parts, its latest reason, its hold.
FIND_FOR_CHANGE = "SELECT status, head, tail, claim, reason, owner, token FROM orders WHERE id = ?"
FIND_ROW = "SELECT head, status, tail, claim FROM orders WHERE id = ?"


@functools.cache
def find_for_changes(count: int) -> str:
    """FIND_FOR_CHANGE for `count` orders at once, each row led by its id."""
    return (
        "SELECT id, status, head, tail, claim, reason, owner, token FROM orders WHERE id IN ("
        + ", ".join(["?"] * count)
        + ")"
    )


UPDATE_ORDER = (
    "UPDATE orders SET status = ?, tail = ?, claim = NULL, reason = ?, owner = ? WHERE id = ?"
)
DELETE_ORDER = "DELETE FROM orders WHERE id = ?"


@functools.cache
def listing(
    status: bool, after: bool, newest: bool, customer: int, tail: int, dense: bool = False
) -> str:
    """A page: one id range (after the cursor, or from the range's start; before the cursor
    when newest first), by the primary key or, with a status, by (status, id); one row more
    than the page, to know whether more follow. `customer` and `tail` are how many bounds of
    the search key's (or the reversed id's) range are given (0, 1 or 2): a prefix is a range
    of orders_customer (orders_id_reversed). A search goes through its index, named: without
    statistics (the store runs no ANALYZE) the planner walked the primary key and filtered,
    every order for a name that is rare. Through the index a search reads what matches and
    sorts it, so it is taken only for a prefix that `search_count` found rare (or a tail: 8
    characters at least, one id in billions, the narrower way in when both are given). A
    `dense` prefix (not with a tail) walks the time order instead, at most as many orders as
    the argument after the range's (`walk`), and filters them by the key: see `walk_end`."""
    where = ["status = ?"] if status else []
    if newest:
        where += ["id >= ?", "id < ?"]
    else:
        where += [f"id {'>' if after else '>='} ?", "id < ?"]
    keys = ["customer_key >= ?", "customer_key < ?"][:customer]
    order = f"ORDER BY id{' DESC' if newest else ''}"
    if dense and customer and not tail:
        walked = (
            f"SELECT head, status, tail, claim, id, customer_key FROM orders{_walk_index(status)}"
            f" WHERE {' AND '.join(where)} {order} LIMIT ?"
        )
        # No ORDER BY outside: the walk is a co-routine, read in its order (a sort there
        # would read the whole walk before the first row; the plans test checks there is none).
        return (
            f"SELECT head, status, tail, claim, id FROM ({walked})"
            f" WHERE {' AND '.join(keys)} LIMIT ?"
        )
    where += keys
    where += ["id_reversed >= ?", "id_reversed < ?"][:tail]
    index = (
        " INDEXED BY orders_id_reversed"
        if tail
        else " INDEXED BY orders_customer"
        if customer
        else ""
    )
    return (
        f"SELECT head, status, tail, claim, id FROM orders{index} WHERE {' AND '.join(where)}"
        f" {order} LIMIT ?"
    )


def _walk_index(status: bool) -> str:
    return " INDEXED BY orders_status" if status else ""


@functools.cache
def walk_end(status: bool, after: bool, newest: bool) -> str:
    """The last order a dense search's walk reads (the arguments of `listing`'s walk, then
    the walk's length less one), if the range holds that many: where the next page goes on
    when a page found fewer matches than it holds, so that no page reads more than the walk
    (matches crowded into one stretch of time, e.g. the newest orders matching none of them,
    left a page to read every order back to them)."""
    where = ["status = ?"] if status else []
    if newest:
        where += ["id >= ?", "id < ?"]
    else:
        where += [f"id {'>' if after else '>='} ?", "id < ?"]
    return (
        f"SELECT id FROM orders{_walk_index(status)} WHERE {' AND '.join(where)}"
        f" ORDER BY id{' DESC' if newest else ''} LIMIT 1 OFFSET ?"
    )


@functools.cache
def search_count(customer: int) -> str:
    """How many orders a customer prefix matches (`customer` bounds of its key's range, as in
    `listing`), counted no further than a bound: the range of orders_customer, the index
    alone (no order is read), at most the bound's entries."""
    where = ["customer_key >= ?", "customer_key < ?"][:customer]
    return (
        "SELECT count(*) FROM (SELECT 1 FROM orders INDEXED BY orders_customer"
        f" WHERE {' AND '.join(where)} LIMIT ?)"
    )


# Claim: the oldest pending orders below an id bound. A row as submitted (no tail) takes the
# batch's claim and nothing else; another has its tail rewritten.
PENDING_BELOW = (
    "SELECT id, tail FROM orders WHERE status = 'pending' AND id < ? ORDER BY id LIMIT ?"
)
CLAIM_PLAIN = "UPDATE orders SET status = 'processing', claim = ?, reason = NULL WHERE id = ?"
CLAIM_TAIL = "UPDATE orders SET status = 'processing', tail = ?, reason = NULL WHERE id = ?"
# Ready orders, oldest first, for a holder; and what a holder holds. Through the partial index
# of ready orders, named: left to itself, the planner took (status, id) and stepped over every
# held order each time, so a drain cost grew with the square of the orders held.
READY = (
    "SELECT id, head, tail, claim FROM orders INDEXED BY orders_ready"
    " WHERE status = 'processing' AND owner IS NULL ORDER BY id LIMIT ?"
)
HOLD = "UPDATE orders SET owner = ?, token = ? WHERE id = ?"
HELD_BY = "SELECT id, token FROM orders WHERE owner = ?"
READY_IDS = (
    "SELECT id FROM orders INDEXED BY orders_ready"
    " WHERE status = 'processing' AND owner IS NULL ORDER BY id LIMIT ?"
)
PROCESSING_IDS = "SELECT id FROM orders WHERE status = 'processing' AND id > ? ORDER BY id LIMIT ?"
# A bulk action's stretch: orders of one status in [low, high), oldest first, with the reason
# the filter looks at. Keyed by whether the lower bound is excluded.
STRETCH = {
    after: "SELECT id, reason, customer_key FROM orders WHERE status = ?"
    f" AND id {'>' if after else '>='} ?"
    " AND id < ? ORDER BY id LIMIT ?"
    for after in (False, True)
}
OLDEST_PENDING = "SELECT id FROM orders WHERE status = 'pending' ORDER BY id LIMIT 1"
TOKEN = "SELECT value FROM meta WHERE key = 'token'"
SET_TOKEN = "UPDATE meta SET value = ? WHERE key = 'token'"

# -- counts and the event log ------------------------------------------------------------------

STATUS_COUNTS = "SELECT status, count FROM status_counts"
FAILED_REASONS = (
    "SELECT reason, count FROM failure_counts WHERE count > 0 ORDER BY count DESC, reason LIMIT ?"
)
MOVE_STATUS = "UPDATE status_counts SET count = count + ? WHERE status = ?"
MOVE_FAILURE = (
    "INSERT INTO failure_counts (reason, count) VALUES (?, ?)"
    " ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count"
)
DROP_NO_FAILURES = "DELETE FROM failure_counts WHERE count = 0"

# -- history and instances ------------------------------------------------------------------------

MOVE_MINUTE = (
    "INSERT INTO order_minutes (minute, submitted, shipped, failed) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (minute) DO UPDATE SET submitted = submitted + excluded.submitted,"
    " shipped = shipped + excluded.shipped, failed = failed + excluded.failed"
)
ORDER_MINUTES = (
    "SELECT minute, submitted, shipped, failed FROM order_minutes WHERE minute >= ?"
    " AND (submitted > 0 OR shipped > 0 OR failed > 0) ORDER BY minute"
)
PRUNE_MINUTES = "DELETE FROM order_minutes WHERE minute < ?"
HEARTBEAT = (
    "INSERT INTO instances (name, started_at, last_heartbeat, held, in_flight, live_until,"
    " stopped) VALUES (?, ?, ?, ?, ?, ?, 0)"
    " ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at,"
    " last_heartbeat = excluded.last_heartbeat, held = excluded.held,"
    " in_flight = excluded.in_flight, live_until = excluded.live_until, stopped = 0"
)
STOP_INSTANCE = "UPDATE instances SET stopped = 1 WHERE name = ?"
INSTANCES = (
    "SELECT name, started_at, last_heartbeat, held, in_flight, live_until, stopped FROM instances"
)
PRUNE_INSTANCES = "DELETE FROM instances WHERE last_heartbeat < ?"

INSERT_EVENT = (
    "INSERT INTO events (type, order_id, status, at, reason, data) VALUES (?, ?, ?, ?, ?, ?)"
)
READ_EVENTS = (
    "SELECT seq, type, order_id, status, at, reason, data FROM events"
    " WHERE seq > ? ORDER BY seq LIMIT ?"
)
PRUNED_THROUGH = "SELECT value FROM meta WHERE key = 'pruned_through'"
SET_PRUNED_THROUGH = "UPDATE meta SET value = ? WHERE key = 'pruned_through'"
LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
# The oldest events, in seq order, as far as a prune may go: (seq, at).
OLDEST_EVENTS = "SELECT seq, at FROM events ORDER BY seq LIMIT ?"
PRUNE_EVENTS = "DELETE FROM events WHERE seq <= ?"

# -- at start -------------------------------------------------------------------------------------

# Whatever a run that ended without a clean stop held: nobody holds it now. Webhook claims too.
RELEASE_WEBHOOK_CLAIMS = (
    "UPDATE webhooks SET owner = NULL, lease_expires_at = ? WHERE owner IS NOT NULL"
)
