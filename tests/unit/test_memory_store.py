"""What only the in-memory store does: its bounded walks over orders of a status it does not
index, its event log (retention by count and by age), and dump/load for snapshots."""

from __future__ import annotations

import threading
from datetime import timedelta

import msgspec
import pytest

from orderflow.domain import (
    Event,
    EventType,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    ReasonCount,
    advance,
)
from orderflow.errors import Gone, OrderConflict
from orderflow.store.base import IdempotencyRecord
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.memory_events import EventLog
from tests.conftest import BASE_TIME, ManualClock, make_order


async def _added(store: InMemoryOrderStore, clock: ManualClock, count: int) -> list[str]:
    orders = [make_order(clock, customer=f"c{n}") for n in range(count)]
    for order in orders:
        await store.add(order)
    return [order.id for order in orders]


# -- bounded walks --------------------------------------------------------------------------------


@pytest.mark.parametrize("newest", [False, True], ids=["oldest", "newest"])
async def test_a_search_walks_a_bounded_stretch_a_page_and_goes_on(newest: bool) -> None:
    """No index of customers or of id tails in memory (each would cost every order about 100
    bytes): a page of a search looks at `max_walk` orders at most, whichever way it goes."""
    clock, store = ManualClock(), InMemoryOrderStore(max_walk=7)
    ids = await _added(store, clock, 40)  # customers c0 … c39
    for query, expected in [
        (OrderQuery(customer="c1", limit=2, newest=newest), [ids[1], *ids[10:20]]),
        (OrderQuery(id_tail=ids[33][-20:], limit=2, newest=newest), [ids[33]]),
        (OrderQuery(customer="c3", status=OrderStatus.PENDING, newest=newest), [ids[3], *ids[30:]]),
    ]:
        seen: list[str] = []
        pages = 0
        while True:
            page = await store.list_orders(query)
            pages += 1
            seen += [order.id for order in page.orders]
            if page.next_cursor is None:
                break
            query = msgspec.structs.replace(query, cursor=page.next_cursor)
        assert seen == (expected[::-1] if newest else expected)
        assert pages >= 40 // 7  # no page walked more than 7 orders
    # A whole id is a lookup, not a walk: one page, however far it is.
    page = await store.list_orders(OrderQuery(id_tail=ids[39], newest=newest))
    assert ([o.id for o in page.orders], page.next_cursor) == ([ids[39]], None)


async def test_processing_pages_walk_a_bounded_stretch_and_go_on() -> None:
    """Regression: listing processing orders walked every order in the range under the lock
    (a third of a second with a million orders, the whole server waiting)."""
    clock, store = ManualClock(), InMemoryOrderStore(max_walk=7)
    ids = await _added(store, clock, 40)
    await store.claim_pending(clock.now(), 40)
    for n, order_id in enumerate(ids):  # all but every tenth leave processing
        if n % 10:
            await store.transition(order_id, Event.CANCEL, clock.now())
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        page = await store.list_orders(
            OrderQuery(status=OrderStatus.PROCESSING, limit=2, cursor=cursor)
        )
        pages += 1
        assert len(page.orders) <= 2
        seen += [order.id for order in page.orders]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids[::10]
    assert pages >= 40 // 7  # no page walked more than 7 orders


async def test_a_bulk_move_of_processing_orders_walks_a_bounded_stretch_and_goes_on() -> None:
    """Processing has no index: a bulk cancel of it walks the time index, at most `max_walk`
    orders per call under the lock, and says where to go on even when it moved none."""
    clock, store = ManualClock(), InMemoryOrderStore(max_walk=7)
    ids = await _added(store, clock, 40)
    await store.claim_pending(clock.now(), 40)
    for n, order_id in enumerate(ids):  # only every tenth stays processing
        if n % 10:
            await store.transition(order_id, Event.CANCEL, clock.now())
    moved: list[str] = []
    after: str | None = None
    calls = 0
    while True:
        batch, after = await store.transition_matching(
            Event.CANCEL, OrderStatus.PROCESSING, OrderFilter(), clock.now(), "bulk",
            limit=100, after=after,
        )  # fmt: skip
        calls += 1
        moved += batch
        if after is None:
            break
    assert moved == ids[::10]
    assert calls >= 40 // 7
    assert (await store.count_by_status())[OrderStatus.CANCELLED] == 40
    assert list(store.check_invariants()) == []


async def test_a_bulk_move_stops_at_its_limit_and_goes_on_after_the_last_moved() -> None:
    """`transition_matching` stops at `limit` and says to go on after the last order it moved."""
    clock, store = ManualClock(), InMemoryOrderStore()
    ids = await _added(store, clock, 5)
    first, after = await store.transition_matching(
        Event.CANCEL, OrderStatus.PENDING, OrderFilter(), clock.now(), None, limit=2
    )
    assert first == ids[:2]
    assert after == ids[1]
    rest, after = await store.transition_matching(
        Event.CANCEL, OrderStatus.PENDING, OrderFilter(), clock.now(), None, limit=5, after=after
    )
    assert rest == ids[2:]
    assert after is None


# -- failure reasons ------------------------------------------------------------------------------


async def test_failure_reason_counts_follow_failures_and_retries() -> None:
    """Failure-reason counts (stats) follow every failure, bulk retry and single retry."""
    clock, store = ManualClock(), InMemoryOrderStore()
    ids = await _added(store, clock, 3)

    async def fail_all(reasons: list[str]) -> None:
        await store.claim_pending(clock.now(), 10)
        held = await store.acquire("me", 10, 15.0)
        by_id = {h.order.id: h.token for h in held}
        await store.write_outcomes(
            "me",
            [
                Outcome(i, by_id[i], Event.FAIL, clock.now(), reason)
                for i, reason in zip(ids, reasons, strict=True)
                if i in by_id
            ],
        )

    await fail_all(["timeout", "timeout", "HTTP 500"])
    assert (await store.stats()).failed_reasons == [
        ReasonCount("timeout", 2),
        ReasonCount("HTTP 500", 1),
    ]
    moved, _ = await store.transition_matching(
        Event.RETRY, OrderStatus.FAILED, OrderFilter(reason_contains="TIME"), clock.now(),
        "retry", limit=10,
    )  # fmt: skip
    assert moved == ids[:2]
    assert (await store.stats()).failed_reasons == [ReasonCount("HTTP 500", 1)]
    await fail_all(["refused", "HTTP 500", "unused"])  # the two retried fail again
    assert (await store.stats()).failed_reasons == [
        ReasonCount("HTTP 500", 2),
        ReasonCount("refused", 1),
    ]
    await store.transition(ids[2], Event.RETRY, clock.now())
    assert (await store.stats(top=1)).failed_reasons == [ReasonCount("HTTP 500", 1)]
    assert list(store.check_invariants()) == []


# -- the event log --------------------------------------------------------------------------------


def _log(retention: int, compact_every: int = 4096) -> tuple[EventLog, threading.Lock]:
    lock = threading.Lock()
    return EventLog(retention, lock, compact_every=compact_every), lock


def _append(log: EventLog, lock: threading.Lock, count: int, start: int = 0) -> None:
    with lock:
        for n in range(start, start + count):
            log.append(
                EventType.SUBMITTED, f"o{n}", OrderStatus.PENDING, BASE_TIME + timedelta(seconds=n)
            )


def test_the_event_log_keeps_the_newest_up_to_its_retention() -> None:
    """EventLog keeps the newest `retention` events; seqs are not reused."""
    log, lock = _log(3)
    assert (log.first_seq, log.last_seq) == (1, 0)
    assert list(log.read(0, None)) == []
    _append(log, lock, 5)
    assert (log.first_seq, log.last_seq) == (3, 5)
    assert [(e.seq, e.order_id) for e in log.read(0, None)] == [(3, "o2"), (4, "o3"), (5, "o4")]
    assert [e.seq for e in log.read(3, 1)] == [4]
    assert list(log.read(5, 10)) == []


def test_the_event_log_stays_continuous_across_compactions() -> None:
    """EventLog seqs and entries stay right across the compactions of its list."""
    log, lock = _log(3, compact_every=4)
    for n in range(20):
        _append(log, lock, 1, start=n)
        events = list(log.read(0, None))
        assert [e.seq for e in events] == list(range(max(1, n - 1), n + 2))
        assert [e.order_id for e in events] == [f"o{s - 1}" for s in range(max(1, n - 1), n + 2)]


def test_the_event_log_prunes_by_age_oldest_first_up_to_a_limit() -> None:
    """EventLog.prune drops events older than a date, oldest first, at most `limit`."""
    log, lock = _log(100)
    _append(log, lock, 10)  # o0 at +0 s … o9 at +9 s
    assert log.prune(BASE_TIME, 100, 100) == 0  # none is older than that
    assert log.prune(BASE_TIME + timedelta(seconds=5), 100, 2) == 2  # the limit
    assert log.first_seq == 3
    assert log.prune(BASE_TIME + timedelta(seconds=5), 100, 100) == 3
    assert [e.order_id for e in log.read(0, None)] == [f"o{n}" for n in range(5, 10)]
    assert log.last_seq == 10


def test_the_event_log_tells_its_listener_of_each_append() -> None:
    """The listener is called after each append (and once per extend)."""
    log, lock = _log(2)
    heard: list[int] = []
    log.listener = lambda: heard.append(log.last_seq)
    _append(log, lock, 3)
    with lock:
        log.extend(EventType.PROCESSING, ["a", "b"], OrderStatus.PROCESSING, BASE_TIME)
    assert heard == [1, 2, 3, 5]


def test_the_event_log_restores_from_a_snapshot_and_goes_on() -> None:
    """EventLog.restore keeps the snapshot's seqs (trimmed to retention) and goes on after its
    last."""
    source, source_lock = _log(100)
    _append(source, source_lock, 6)
    assert source.prune(BASE_TIME, keep=4, limit=100) == 2
    events = list(source.read(0, None))
    log, lock = _log(3)
    with lock:
        log.restore(events, source.last_seq)
    assert (log.first_seq, log.last_seq) == (4, 6)  # the newest 3 of 3…6 kept
    _append(log, lock, 1, start=6)
    assert [e.seq for e in log.read(0, None)] == [5, 6, 7]


def test_an_event_log_keeps_at_least_one_event() -> None:
    """A retention below 1 is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        EventLog(0, threading.Lock())


async def test_the_store_keeps_events_up_to_its_retention_and_says_gone_for_the_rest() -> None:
    """The store keeps event_retention events; reading from before them raises Gone."""
    clock, store = ManualClock(), InMemoryOrderStore(event_retention=5)
    ids = await _added(store, clock, 8)
    assert await store.last_event_seq() == 8
    with pytest.raises(Gone):
        await store.read_events(0, 100)
    with pytest.raises(Gone):
        await store.read_events(2, 100)
    kept = await store.read_events(3, 100)  # seq 4 is the oldest kept
    assert [(e.seq, e.order_id) for e in kept] == list(zip(range(4, 9), ids[3:], strict=True))


async def test_the_store_prunes_events_by_age_and_by_count() -> None:
    """prune_events drops events by age and beyond the newest `keep`, at most `limit` per call."""
    clock, store = ManualClock(), InMemoryOrderStore()
    await _added(store, clock, 6)
    clock.advance(60)
    await _added(store, clock, 4)
    assert await store.prune_events(BASE_TIME + timedelta(seconds=30), keep=100, limit=4) == 4
    assert await store.prune_events(BASE_TIME + timedelta(seconds=30), keep=100) == 2
    assert [e.seq for e in await store.read_events(6, 100)] == [7, 8, 9, 10]
    assert await store.prune_events(BASE_TIME, keep=1) == 3  # beyond the newest one
    with pytest.raises(Gone):
        await store.read_events(8, 100)
    assert [e.seq for e in await store.read_events(9, 100)] == [10]
    assert await store.last_event_seq() == 10


async def test_dump_and_load_keep_orders_keys_events_and_the_seq() -> None:
    """dump/load keep orders, shipments, keys and events; seqs go on after the dumped
    last_event_seq."""
    clock = ManualClock()
    store = InMemoryOrderStore(event_retention=6)
    ids = await _added(store, clock, 4)
    keyed = make_order(clock)
    record = IdempotencyRecord("k-1", "fp", keyed.id, keyed.timestamp)
    await store.add(keyed, record)
    await store.transition(ids[0], Event.CANCEL, clock.now(), "no")
    await store.claim_pending(clock.now(), 2)
    [held] = await store.acquire("me", 1, 15.0)
    await store.write_outcomes(
        "me", [Outcome(held.order.id, held.token, Event.SHIP, clock.now(), None, {"t": "T1"})]
    )
    state = store.dump()
    assert state.last_event_seq == await store.last_event_seq() == 9
    assert [e.seq for e in state.events] == list(range(4, 10))  # retention: the newest 6

    restored = InMemoryOrderStore(event_retention=6)
    restored.load(state)
    for order_id in [*ids, keyed.id]:
        assert await restored.get_order(order_id) == await store.get_order(order_id)
    assert (await restored.get_order(held.order.id)).shipment == {"t": "T1"}
    assert await restored.find_idempotency("k-1") == record
    assert await restored.read_events(3, 100) == await store.read_events(3, 100)
    assert await restored.last_event_seq() == 9
    await restored.transition(ids[3], Event.CANCEL, clock.now())
    [after] = await restored.read_events(9, 100)
    assert after.seq == 10  # seqs go on where they stopped, never reused
    with pytest.raises(Gone):
        await restored.read_events(2, 100)
    assert await restored.count_by_status() == {
        **await store.count_by_status(),
        OrderStatus.PENDING: 1,
        OrderStatus.CANCELLED: 2,
    }
    assert list(restored.check_invariants()) == []


async def test_a_processing_order_loaded_is_ready_to_acquire_and_load_may_change_orders() -> None:
    """A processing order loaded is ready to acquire; `on_order` may change orders on the way in."""
    clock, store = ManualClock(), InMemoryOrderStore()
    ids = await _added(store, clock, 3)
    await store.claim_pending(clock.now(), 2)
    state = store.dump()

    as_is = InMemoryOrderStore()
    as_is.load(state)
    assert sorted(h.order.id for h in await as_is.acquire("me", 10, 15.0)) == ids[:2]
    assert list(as_is.check_invariants()) == []

    back = InMemoryOrderStore()
    at = clock.now()
    back.load(
        state,
        lambda o: (
            advance(o, Event.RELEASE, at, "restart") if o.status is OrderStatus.PROCESSING else o
        ),
    )
    assert (await back.count_by_status())[OrderStatus.PENDING] == 3
    assert await back.acquire("me", 10, 15.0) == []
    assert list(back.check_invariants()) == []


async def test_load_refuses_a_store_that_holds_orders() -> None:
    """A snapshot loads into an empty store only."""
    clock, store = ManualClock(), InMemoryOrderStore()
    await _added(store, clock, 1)
    with pytest.raises(OrderConflict, match="empty store"):
        store.load(store.dump())
