"""The event log as a transactional outbox, and the counts folded in from it: an event exists
if and only if its change committed; events are numbered only once no transaction that began
before theirs can still commit (so a reader never sees a number filled in behind it); and the
counts `stats()` reports equal a recount of the orders."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from orderflow.domain import (
    Event,
    Hold,
    Order,
    OrderFilter,
    OrderStatus,
    Outcome,
    search_key,
)
from orderflow.errors import IllegalTransition, NotHeld, OrderConflict
from orderflow.store import postgres_sql as sql
from orderflow.store.base import IdempotencyRecord
from orderflow.store.postgres import PostgresOrderStore
from tests.conftest import eventually
from tests.postgres import DATABASE_URL
from tests.postgres_store.conftest import LATER, T0, add_orders, add_ready, make_order

pytestmark = pytest.mark.postgres

_encode = msgspec.json.Encoder().encode


def insert_args(order: Order) -> list[Any]:
    """INSERT_ORDER's arguments for `order`, without an idempotency key."""
    return [
        order.id, order.customer, _encode(order.items).decode(), order.timestamp,
        order.status.value, order.updated_at, _encode(order.history).decode(), None, None, None,
        None, search_key(order.customer),
    ]  # fmt: skip


@pytest.fixture
async def other_connection(store: PostgresOrderStore) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own on the store's schema, for a transaction the test holds open."""
    db = await asyncpg.connect(DATABASE_URL, server_settings=store.server_settings)
    try:
        yield db
    finally:
        await db.close()


async def all_events(store: PostgresOrderStore) -> list[asyncpg.Record]:
    """Every event, numbered or not, in the order they were written, with its batch's id and
    seq."""
    async with store.database.connection() as db:
        rows: list[asyncpg.Record] = await db.fetch(
            "SELECT b.id, b.seq, e.type, e.order_id, e.status FROM events e"
            " JOIN event_batches b ON b.id = e.batch ORDER BY e.batch, e.pos"
        )
    return rows


async def numbered(store: PostgresOrderStore, after: int, count: int) -> list[str]:
    """The order ids of the events numbered after `after`, once there are `count` of them
    (numbering each round what has committed by then)."""

    async def ready() -> list[str]:
        await store.sequence_events()
        events = await store.read_events(after, 100)
        return [e.order_id for e in events] if len(events) >= count else []

    return await eventually(ready)


async def test_a_change_rolled_back_leaves_no_event(
    store: PostgresOrderStore, other_connection: asyncpg.Connection
) -> None:
    kept = make_order(1)
    await store.add(kept)
    dropped = make_order(2)
    transaction = other_connection.transaction()
    await transaction.start()
    await other_connection.fetchval(sql.INSERT_ORDER, *insert_args(dropped))
    assert await other_connection.fetchval(
        "SELECT count(*) FROM events WHERE order_id = $1", dropped.id
    )
    await transaction.rollback()
    assert await store.find_order(dropped.id) is None
    assert [row["order_id"] for row in await all_events(store)] == [kept.id]
    assert await numbered(store, 0, 1) == [kept.id]


async def test_refused_changes_leave_no_event(store: PostgresOrderStore) -> None:
    first, second = await add_ready(store, 2)
    [held] = await store.acquire("w", 1, lease_s=60)
    shipped = await store.transition(first, Event.SHIP, LATER, hold=Hold("w", held.token))
    keyed = make_order(7)
    key = IdempotencyRecord("key-1", "print", keyed.id, keyed.timestamp)
    assert await store.add(keyed, key) is None
    before = await all_events(store)
    with pytest.raises(OrderConflict):
        await store.add(shipped)  # the same id again
    replay = make_order(8)
    assert await store.add(replay, IdempotencyRecord("key-1", "other", replay.id, T0)) == key
    assert await store.find_order(replay.id) is None
    with pytest.raises(IllegalTransition):
        await store.transition(first, Event.CANCEL, LATER)
    with pytest.raises(IllegalTransition):
        await store.delete_pending(first, LATER)
    with pytest.raises(NotHeld):
        await store.transition(second, Event.SHIP, LATER, hold=Hold("w", 99))
    assert await store.write_outcomes("w", [Outcome(second, 99, Event.SHIP, LATER)]) == [False]
    assert await store.write_outcomes("x", [Outcome(first, held.token, Event.FAIL, LATER)]) == [
        False
    ]
    assert await store.retire("nobody", LATER) == 0
    assert await store.rescue_expired(LATER) == 0
    assert await all_events(store) == before


async def test_every_committed_change_has_its_event_in_the_order_of_its_history(
    store: PostgresOrderStore,
) -> None:
    ids = await add_orders(store, 6)
    await store.claim_pending(T0, 4)  # ids[0..3]; ids[4], ids[5] stay pending
    held = {h.order.id: h.token for h in await store.acquire("w", 3, lease_s=60)}
    await store.write_outcomes(
        "w",
        [
            Outcome(ids[0], held[ids[0]], Event.SHIP, LATER, shipment={"tracking": "t0"}),
            Outcome(ids[1], held[ids[1]], Event.REATTEMPT, LATER, "carrier down"),
        ],
    )
    await store.write_outcomes("w", [Outcome(ids[1], held[ids[1]], Event.FAIL, LATER, "timeout")])
    await store.transition(ids[2], Event.HANDBACK, LATER, "shutdown", hold=Hold("w", held[ids[2]]))
    await store.transition(ids[3], Event.CANCEL, LATER, "changed my mind")
    await store.transition(ids[1], Event.RETRY, LATER, "try again")
    await store.delete_pending(ids[5], LATER)
    events = await numbered(store, 0, 17)
    assert len(events) == 17
    read = await store.read_events(0, 100)
    assert [e.seq for e in read] == list(range(1, 18))
    for order_id in ids[:5]:
        order = await store.get_order(order_id)
        mine = [e for e in read if e.order_id == order_id]
        assert [e.status for e in mine] == [h.status for h in order.history], order_id
        assert [e.reason for e in mine[1:]] == [h.reason for h in order.history[1:]], order_id
    [deleted] = [e for e in read if e.order_id == ids[5] and e.status is None]
    assert deleted.type.value == "order.deleted"
    [ship] = [e for e in read if e.order_id == ids[0] and e.status is OrderStatus.SHIPPED]
    assert ship.data == {"tracking": "t0"}


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
async def test_a_reader_following_seq_misses_no_event_of_a_transaction_that_commits_late(
    store: PostgresOrderStore, other_connection: asyncpg.Connection, first_ends: str
) -> None:
    """T1 writes an order (and its event) and stays open; T2 writes one and commits after it.
    Whatever numbering does meanwhile, T1's event must never get a number at or below one a
    reader has already read past: it is numbered once T1 committed, after all numbered before
    (and never, if T1 rolls back). Every event is read once, numbered without gaps."""
    earlier = make_order(1)
    await store.add(earlier)
    assert await numbered(store, 0, 1) == [earlier.id]
    first, second = make_order(2), make_order(3)
    t1 = other_connection.transaction()
    await t1.start()
    try:
        await other_connection.fetchval(sql.INSERT_ORDER, *insert_args(first))  # T1 has its xid
        await store.add(second)  # T2: committed, after T1 began writing
        await store.sequence_events()
        while_open = await store.read_events(1, 100)  # a reader, while T1 is open
        assert first.id not in [e.order_id for e in while_open]
        assert [e.order_id for e in while_open] in ([], [second.id])
    finally:
        await (t1.commit() if first_ends == "commit" else t1.rollback())
    read_past = max([1, *(e.seq for e in while_open)])
    expected = [second.id, first.id] if first_ends == "commit" else [second.id]
    missing = len(expected) - len(while_open)
    later = await numbered(store, read_past, missing) if missing else []
    await store.sequence_events()
    assert await store.read_events(read_past + len(later), 100) == []
    assert sorted([e.order_id for e in while_open] + later) == sorted(expected)  # each once
    log = await store.read_events(0, 100)
    assert [e.seq for e in log] == list(range(1, len(expected) + 2))  # no gap
    assert log[0].order_id == earlier.id


async def test_counts_equal_a_recount_after_mixed_changes(
    store: PostgresOrderStore, other_connection: asyncpg.Connection
) -> None:
    ids = await add_orders(store, 30)
    await store.claim_pending(T0, 20)  # ids[0..19] processing
    held = {h.order.id: h.token for h in await store.acquire("w", 12, lease_s=60)}
    outcomes = [Outcome(i, held[i], Event.SHIP, LATER) for i in ids[0:5]]
    outcomes += [Outcome(i, held[i], Event.FAIL, LATER, "timeout") for i in ids[5:7]]
    outcomes += [Outcome(ids[7], held[ids[7]], Event.FAIL, LATER, "carrier down")]
    outcomes += [Outcome(ids[8], held[ids[8]], Event.REATTEMPT, LATER, "carrier down")]
    await store.write_outcomes("w", outcomes)
    await store.transition(ids[9], Event.CANCEL, LATER)  # held
    await store.transition(ids[20], Event.CANCEL, LATER)  # pending
    await store.delete_pending(ids[21], LATER)
    await store.delete_pending(ids[22], LATER)
    await store.transition(
        ids[10], Event.HANDBACK, LATER, "shutdown", hold=Hold("w", held[ids[10]])
    )
    moved, _ = await store.transition_matching(
        Event.RETRY, OrderStatus.FAILED, OrderFilter(reason_contains="TIME"), LATER, "bulk",
        limit=10,
    )  # fmt: skip
    assert sorted(moved) == ids[5:7]
    await store.acquire("dead", 3, lease_s=0)
    assert await store.rescue_expired(LATER) == 3
    assert await store.retire("w", LATER) == 2  # ids[8] and ids[11]
    await store.claim_pending(LATER, 2)
    # Refused and rolled-back changes count for nothing.
    with pytest.raises(OrderConflict):
        await store.add(await store.get_order(ids[0]))
    with pytest.raises(asyncpg.DivisionByZeroError):
        await changes_rolled_back(other_connection, ids[29])
    await eventually(lambda: _stats_match(store))


async def changes_rolled_back(db: asyncpg.Connection, pending_id: str) -> None:
    """An insert and a cancel in a transaction that then fails, so neither happened."""
    async with db.transaction():
        await db.fetchval(sql.INSERT_ORDER, *insert_args(make_order(99)))
        await db.fetchval(
            sql.TRANSITION, pending_id, "cancelled", LATER, "[]", False, ["pending"], None, None,
            "order.cancelled", None, True, False,
        )  # fmt: skip
        await db.execute("SELECT 1/0")


async def _stats_match(store: PostgresOrderStore) -> bool:
    stats = await store.stats()
    async with store.database.connection() as db:
        by_status = dict(await db.fetch("SELECT status, count(*) FROM orders GROUP BY status"))
        reasons = await db.fetch(
            "SELECT history->-1->>'reason' FROM orders WHERE status = 'failed'"
        )
    recount = {status: by_status.get(status.value, 0) for status in OrderStatus}
    failed = Counter(row[0] or "" for row in reasons)
    assert sum(recount.values()) == 28  # 30 added, 2 deleted
    if stats.by_status != recount:
        return False
    assert {r.reason: r.count for r in stats.failed_reasons} == dict(failed)
    assert await store.count_by_status() == recount
    return True
