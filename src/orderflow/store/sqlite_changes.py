"""The changes SqliteOrderStore makes, each a function run by the writer thread inside its
group's transaction (see sqlite_db): read the row, let the domain decide, write the row, append
the event, move the counts. A change checks everything before it writes anything, so one that
is refused (OrderNotFound, IllegalTransition, NotHeld) leaves nothing behind.

Rows are kept as the in-memory store keeps them (`memory_rows`): the order's JSON in two parts,
so a listing joins bytes and a claim of an order as submitted writes no JSON at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from orderflow.domain import (
    EVENT_TYPE,
    Event,
    EventType,
    Held,
    Hold,
    Order,
    OrderFilter,
    OrderStatus,
    Parcel,
    ends_hold,
    lost_track,
    micros_since_epoch,
    minute_of,
    next_status,
    order_id_floor,
    reversed_id,
    search_key,
    sources_of,
    target_of,
)
from orderflow.errors import IllegalTransition, NotHeld, OrderNotFound
from orderflow.store import sqlite_sql as sql
from orderflow.store.base import IdempotencyRecord
from orderflow.store.memory_rows import (
    ClaimStamp,
    Row,
    advanced,
    claim_at,
    claimed,
    order_of,
    render,
)
from orderflow.store.sqlite_db import Change

MAX_WALK = 10_000  # orders a bulk action's batch looks at
STATUS: dict[str, OrderStatus] = {status.value: status for status in OrderStatus}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encode = msgspec.json.Encoder().encode
_decode_time = msgspec.json.Decoder(datetime).decode


def micros(at: datetime) -> int:
    return micros_since_epoch(at)


def instant(value: int) -> datetime:
    """A time stored as microseconds since 1970, in UTC."""
    return _EPOCH + timedelta(microseconds=value)


def row_of(head: bytes, status: str, tail: bytes | None, claim: bytes | None) -> Row:
    """The memory_rows Row of a stored row."""
    return Row(
        head,
        STATUS[status],
        tail,
        None if claim is None else ClaimStamp(_decode_time(claim), claim),
    )


def record_of(row: Any) -> IdempotencyRecord:
    key, fingerprint, order_id, created_at = row
    return IdempotencyRecord(key, fingerprint, order_id, instant(created_at))


# -- counts and events ----------------------------------------------------------------------------


def _moved(
    change: Change,
    old: OrderStatus | None,
    new: OrderStatus | None,
    old_reason: str | None,
    new_reason: str | None,
    n: int = 1,
) -> None:
    deltas = change.deltas
    if old is not None:
        deltas["status", old.value] -= n
        if old is OrderStatus.FAILED:
            deltas["failure", old_reason or ""] -= n
    if new is not None:
        deltas["status", new.value] += n
        if new is OrderStatus.FAILED:
            deltas["failure", new_reason or ""] += n


def flush(db: Any, deltas: Counter[tuple[str, str | int]]) -> None:
    """Write a group's moves of the counts (the writer calls it before the commit)."""
    statuses = [(n, key) for (kind, key), n in deltas.items() if kind == "status" and n]
    failures = [(key, n) for (kind, key), n in deltas.items() if kind == "failure" and n]
    if statuses:
        db.executemany(sql.MOVE_STATUS, statuses)
    if failures:
        db.executemany(sql.MOVE_FAILURE, failures)
        db.execute(sql.DROP_NO_FAILURES)
    minutes: dict[str | int, list[int]] = {}
    for (kind, minute), n in deltas.items():
        column = _MINUTE_COLUMNS.get(kind)
        if column is not None and n:
            minutes.setdefault(minute, [0, 0, 0])[column] += n
    if minutes:
        db.executemany(sql.MOVE_MINUTE, [(minute, *ns) for minute, ns in minutes.items()])


# What the minute counts count: orders submitted (a kind of its own: a new order), shipped and
# failed (the statuses they move to), and the column of each.
SUBMITTED = "submitted"
_MINUTE_COLUMNS = {SUBMITTED: 0, OrderStatus.SHIPPED.value: 1, OrderStatus.FAILED.value: 2}


def _minute(change: Change, kind: str, at: datetime, n: int = 1) -> None:
    """Count `n` orders of `kind` in the minute of `at` (flushed with the group)."""
    change.deltas[kind, minute_of(at)] += n


def _event(
    change: Change,
    type: EventType,
    order_id: str,
    status: OrderStatus | None,
    at: datetime,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    change.db.execute(
        sql.INSERT_EVENT,
        (
            type.value,
            order_id,
            None if status is None else status.value,
            micros(at),
            reason,
            None if data is None else _encode(data),
        ),
    )
    change.notify = True


# -- changes --------------------------------------------------------------------------------------


def search_keys(order: Order) -> tuple[str, str]:
    """What the row keeps to be searched by: its customer's search key, its id reversed."""
    return search_key(order.customer), reversed_id(order.id)


def add(
    change: Change, order: Order, row: Row, idempotency: IdempotencyRecord | None
) -> IdempotencyRecord | None:
    """Store a new order (with its key); the existing record when the key was used."""
    db = change.db
    if idempotency is not None:
        existing = db.execute(sql.FIND_KEY, (idempotency.key,)).fetchone()
        if existing is not None:
            return record_of(existing)
    reason = order.history[-1].reason
    # A duplicate id: the driver's IntegrityError, which the store turns into OrderConflict.
    db.execute(
        sql.INSERT_ORDER,
        (order.id, row.status.value, row.head, row.tail, reason, *search_keys(order)),
    )
    if idempotency is not None:
        db.execute(
            sql.INSERT_KEY,
            (idempotency.key, idempotency.fingerprint, order.id, micros(idempotency.created_at)),
        )
    _event(change, EventType.SUBMITTED, order.id, order.status, order.updated_at)
    _moved(change, None, order.status, None, reason)
    _minute(change, SUBMITTED, order.updated_at)
    return None


def add_many(change: Change, items: list[tuple[Order, Row]]) -> list[None]:
    """Store new orders (no idempotency key), in multi-row statements: a group's submits
    cost two trips into SQLite, not two each."""
    db = change.db
    for start in range(0, len(items), sql.MAX_ROWS):
        chunk = items[start : start + sql.MAX_ROWS]
        db.execute(
            sql.insert_orders(len(chunk)),
            [
                v
                for o, r in chunk
                for v in (o.id, r.status.value, r.head, r.tail, None, *search_keys(o))
            ],
        )
        db.execute(
            sql.insert_events(len(chunk)),
            [
                v
                for o, _ in chunk
                for v in (_SUBMITTED, o.id, o.status.value, micros(o.updated_at), None, None)
            ],
        )
    for order, _ in items:
        _moved(change, None, order.status, None, order.history[-1].reason)
        _minute(change, SUBMITTED, order.updated_at)
    change.notify = True
    return [None] * len(items)


_SUBMITTED = EventType.SUBMITTED.value


def delete_pending(change: Change, order_id: str, at: datetime) -> None:
    found = change.db.execute(sql.FIND_FOR_CHANGE, (order_id,)).fetchone()
    if found is None:
        raise OrderNotFound(f"no order with id {order_id!r}")
    if found[0] != sql.PENDING:
        raise IllegalTransition(f"only pending orders can be deleted; this one is {found[0]}")
    change.db.execute(sql.DELETE_ORDER, (order_id,))
    _event(change, EventType.DELETED, order_id, None, at)
    _moved(change, OrderStatus.PENDING, None, None, None)


def transition(
    change: Change,
    order_id: str,
    event: Event,
    at: datetime,
    reason: str | None,
    hold: Hold | None,
    shipment: dict[str, Any] | None = None,
    event_type: EventType | None = None,
) -> Order:
    """One checked transition (see OrderStore.transition); the order as changed."""
    return order_of(transition_row(change, order_id, event, at, reason, hold, shipment, event_type))


def transition_row(
    change: Change,
    order_id: str,
    event: Event,
    at: datetime,
    reason: str | None,
    hold: Hold | None,
    shipment: dict[str, Any] | None = None,
    event_type: EventType | None = None,
) -> Row:
    """`transition`, answering the row as changed (rewritten as bytes, never decoded)."""
    db = change.db
    found = db.execute(sql.FIND_FOR_CHANGE, (order_id,)).fetchone()
    if found is None:
        raise OrderNotFound(f"no order with id {order_id!r}")
    status, head, tail, claim, old_reason, owner, token = found
    old = STATUS[status]
    new = next_status(old, event)
    if hold is not None and (owner != hold.owner or token != hold.token):
        raise NotHeld(f"order {order_id} is not held by {hold.owner} under {hold.token}")
    row = advanced(row_of(head, status, tail, claim), new, _encode(at), reason, shipment)
    keep = not ends_hold(event)
    db.execute(sql.UPDATE_ORDER, (new.value, row.tail, reason, owner if keep else None, order_id))
    _event(change, event_type or EVENT_TYPE[event], order_id, new, at, reason, shipment)
    _moved(change, old, new, old_reason, reason)
    if new.value in _MINUTE_COLUMNS:
        _minute(change, new.value, at)
    return row


def claim_pending(change: Change, at: datetime, limit: int, below: str) -> int:
    db = change.db
    rows = db.execute(sql.PENDING_BELOW, (below, limit)).fetchall()
    if not rows:
        return 0
    claim = claim_at(at)
    db.executemany(sql.CLAIM_PLAIN, [(claim.json, i) for i, tail in rows if tail is None])
    rewritten = [
        (claimed(Row(b"", OrderStatus.PENDING, tail), claim).tail, i)
        for i, tail in rows
        if tail is not None
    ]
    if rewritten:
        db.executemany(sql.CLAIM_TAIL, rewritten)
    db.executemany(
        sql.INSERT_EVENT,
        [(EventType.PROCESSING.value, i, sql.PROCESSING, micros(at), None, None) for i, _ in rows],
    )
    change.notify = True
    _moved(change, OrderStatus.PENDING, OrderStatus.PROCESSING, None, None, len(rows))
    return len(rows)


class Tokens:
    """Fencing tokens: each acquisition gets the next; the last one given is kept in the file
    (in the acquiring transaction), so tokens grow across restarts too."""

    def __init__(self, last: int) -> None:
        self.last = last

    def take(self, change: Change, count: int) -> int:
        """The first of `count` new tokens."""
        first = self.last + 1
        self.last += count
        change.db.execute(sql.SET_TOKEN, (self.last,))
        return first


def acquire(change: Change, tokens: Tokens, owner: str, limit: int) -> list[Held]:
    db = change.db
    rows = db.execute(sql.READY, (limit,)).fetchall()
    if not rows:
        return []
    first = tokens.take(change, len(rows))
    db.executemany(sql.HOLD, [(owner, first + n, row[0]) for n, row in enumerate(rows)])
    return [
        Held(Parcel(order_id, json=render(row_of(head, sql.PROCESSING, tail, claim))), first + n)
        for n, (order_id, head, tail, claim) in enumerate(rows)
    ]


def renew(change: Change, owner: str, holds: Mapping[str, int], at: datetime) -> set[str]:
    mine = dict(change.db.execute(sql.HELD_BY, (owner,)).fetchall())
    lost = {i for i, token in holds.items() if mine.get(i) != token}
    for order_id, token in mine.items():
        if holds.get(order_id) != token:
            transition(change, order_id, Event.HANDBACK, at, lost_track(owner), None)
    return lost


def retire(change: Change, owner: str, at: datetime) -> int:
    mine = change.db.execute(sql.HELD_BY, (owner,)).fetchall()
    for order_id, _ in mine:
        transition(change, order_id, Event.HANDBACK, at, f"handed back: {owner} stopped", None)
    return len(mine)


def release_ready(change: Change, at: datetime, reason: str, limit: int) -> int:
    """Up to `limit` ready orders back to pending; returns how many."""
    ids = [row[0] for row in change.db.execute(sql.READY_IDS, (limit,)).fetchall()]
    for order_id in ids:
        transition(change, order_id, Event.RELEASE, at, reason, None)
    return len(ids)


def rescue_processing(change: Change, at: datetime, after: str, limit: int) -> list[str]:
    """Up to `limit` processing orders after the id `after`, each ready again with a history
    entry saying why (at start: whoever held them is gone); their ids."""
    db = change.db
    ids = [row[0] for row in db.execute(sql.PROCESSING_IDS, (after, limit)).fetchall()]
    reason = "rescued at start: the last run ended while it was processing"
    for order_id in ids:
        transition(change, order_id, Event.HANDBACK, at, reason, None, None, EventType.RESCUED)
    return ids


def transition_matching(
    change: Change,
    event: Event,
    source: OrderStatus,
    where: OrderFilter,
    at: datetime,
    reason: str | None,
    limit: int,
    after: str | None,
    max_walk: int = MAX_WALK,
    dry_run: bool = False,
) -> tuple[list[str], str | None]:
    next_status(source, event)  # raises IllegalTransition
    low = "" if where.start is None else order_id_floor(where.start)
    high = sql.ABOVE_ALL_IDS if where.end is None else order_id_floor(where.end)
    skip_low = after is not None and after >= low
    if skip_low:
        assert after is not None
        low = after
    stretch = change.db.execute(
        sql.STRETCH[skip_low], (source.value, low, high, max_walk)
    ).fetchall()
    moved: list[str] = []
    for order_id, latest, key in stretch:
        if where.reason_matches(latest) and where.customer_matches(key):
            if not dry_run:
                transition(change, order_id, event, at, reason, None)
            moved.append(order_id)
            if len(moved) == limit:
                return moved, order_id
    return moved, stretch[-1][0] if len(stretch) == max_walk else None


def write_outcomes(change: Change, owner: str, outcomes: Iterable[Any]) -> list[bool]:
    """A holder's batch of outcomes, each checked as `transition_row` checks one, in a few
    multi-row statements a chunk: one read of the rows, one update each, one insert of the
    events (three trips into SQLite for hundreds of orders, where each order took three)."""
    batch = list(outcomes)
    written = [False] * len(batch)
    db = change.db
    moves: Counter[tuple[OrderStatus, OrderStatus, str | None, str | None]] = Counter()
    ends: Counter[tuple[str, datetime]] = Counter()  # shipped and failed, by time
    for start in range(0, len(batch), sql.MAX_ROWS):
        chunk = batch[start : start + sql.MAX_ROWS]
        ids = list({o.order_id: None for o in chunk})
        rows = {r[0]: r[1:] for r in db.execute(sql.find_for_changes(len(ids)), ids)}
        updates: list[tuple[Any, ...]] = []
        events: list[Any] = []
        for n, o in enumerate(chunk, start):
            found = rows.get(o.order_id)
            if found is None:
                continue
            status, head, tail, claim, old_reason, held_by, token = found
            old = STATUS[status]
            move = _MOVES.get((old, o.event))
            if move is None or held_by != owner or token != o.token:
                continue
            new, new_value, type_value, keep = move
            row = advanced(row_of(head, status, tail, claim), new, _encode(o.at), o.reason,
                           o.shipment)  # fmt: skip
            holder = owner if keep else None
            # A later outcome of the same order in this chunk (a reattempt, then its end)
            # starts from this one.
            rows[o.order_id] = (new_value, head, row.tail, None, o.reason, holder, token)
            updates.append((new_value, row.tail, o.reason, holder, o.order_id))
            data = None if o.shipment is None else _encode(o.shipment)
            events += (type_value, o.order_id, new_value, micros(o.at), o.reason, data)
            moves[old, new, old_reason, o.reason] += 1
            if new_value in _MINUTE_COLUMNS:
                ends[new_value, o.at] += 1
            written[n] = True
        if updates:
            db.executemany(sql.UPDATE_ORDER, updates)
            db.execute(sql.insert_events(len(updates)), events)
            change.notify = True
    for (old, new, old_reason, reason), count in moves.items():
        _moved(change, old, new, old_reason, reason, count)
    for (kind, at), count in ends.items():
        _minute(change, kind, at, count)
    return written


# What a holder's outcome does, by (status, event): the status it moves to, that status's and
# the event's names as stored, and whether the hold goes on.
_MOVES = {
    (source, event): (
        target_of(event),
        target_of(event).value,
        EVENT_TYPE[event].value,
        not ends_hold(event),
    )
    for event in Event
    for source in sources_of(event)
}


def prune_events(change: Change, before: datetime, keep: int, limit: int) -> int:
    """Drop up to `limit` of the oldest events: beyond the newest `keep`, and dated before
    `before`; always a prefix of the log, so what is kept has no hole."""
    db = change.db
    last = (db.execute(sql.LAST_SEQ).fetchone() or (0,))[0]
    oldest = db.execute(sql.OLDEST_EVENTS, (limit,)).fetchall()
    if not oldest:
        return 0
    beyond = cutoff = last - keep  # every seq up to here goes; then those dated before
    threshold = micros(before)
    for seq, at in oldest:
        if seq <= beyond:
            continue
        if at >= threshold:
            break
        cutoff = seq
    cutoff = min(cutoff, oldest[-1][0])
    if cutoff < oldest[0][0]:
        return 0
    pruned = db.execute(sql.PRUNE_EVENTS, (cutoff,)).rowcount
    db.execute(sql.SET_PRUNED_THROUGH, (cutoff,))
    return int(pruned)


def prune_idempotency(change: Change, created_before: datetime, limit: int) -> int:
    return int(change.db.execute(sql.PRUNE_KEYS, (micros(created_before), limit)).rowcount)
