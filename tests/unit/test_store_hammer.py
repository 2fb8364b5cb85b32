"""Many threads, each with its own event loop, and many tasks hammer one store of each backend
as holders and as operators (on PostgreSQL each thread has a pool of its own, as another
process would, and there are fewer of them); afterwards nothing is lost or duplicated, no order
was handed out twice or shipped twice, the counts agree with the orders (and, in memory and on
SQLite, the store's own check of its indexes holds), and the event log holds exactly one event
per change made."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import NamedTuple

import pytest

from orderflow.domain import (
    Event,
    EventType,
    OrderEvent,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
)
from orderflow.errors import IllegalTransition, OrderConflict, OrderNotFound
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.sqlite import SqliteOrderStore
from tests.backends import BACKENDS, another_handle, open_store
from tests.conftest import BASE_TIME, ManualClock, make_order


class Size(NamedTuple):
    threads: int
    tasks: int  # per thread
    orders: int  # per task


SIZES = {"memory": Size(8, 8, 40), "sqlite": Size(8, 8, 40), "postgres": Size(8, 4, 40)}
LEASE_S = 15.0


class Acquired(NamedTuple):
    order_id: str
    token: int
    owner: str


class Written(NamedTuple):
    order_id: str
    token: int
    owner: str
    event: Event


class Ledger:
    """What the tasks did and saw, shared by every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.added: list[str] = []
        self.deleted: list[str] = []
        self.acquired: list[Acquired] = []
        self.written: list[Written] = []
        self.changes: Counter[EventType] = Counter()  # changes each task saw made
        self.retired = 0  # orders handed back by retire

    def count(self, kind: EventType, n: int = 1) -> None:
        with self.lock:
            self.changes[kind] += n


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_and_tasks_lose_nothing_and_never_hand_an_order_out_twice(backend: str) -> None:
    asyncio.run(hammer(backend, SIZES[backend]))


async def hammer(backend: str, size: Size) -> None:
    async with open_store(backend) as store:
        ledger = Ledger()
        # The store stays open in this loop while the threads hammer it, each through a handle
        # of its own (its own loop).
        await asyncio.to_thread(run_threads, store, size, ledger)
        while await store.sequence_events() < 0:  # (-1: another numbers them right now)
            pass
        await _check(store, size, ledger)


def run_threads(shared: OrderStore, size: Size, ledger: Ledger) -> None:
    clock, clock_lock = ManualClock(), threading.Lock()

    def now() -> datetime:
        with clock_lock:
            return clock.now()

    async def write(
        store: OrderStore, owner: str, order_id: str, token: int, event: Event, reason: str | None
    ) -> bool:
        [written] = await store.write_outcomes(
            owner, [Outcome(order_id, token, event, now(), reason)]
        )
        if written:
            with ledger.lock:
                ledger.written.append(Written(order_id, token, owner, event))
        return written

    async def worker(store: OrderStore, seed: int) -> None:
        rng = random.Random(seed)
        owner = f"owner-{seed}"
        mine: list[str] = []  # the orders this task submitted
        holding: dict[str, int] = {}  # what it holds: id → token
        for n in range(size.orders):
            with clock_lock:
                order = make_order(clock, customer=f"c{seed}-{n}")
            await store.add(order)
            mine.append(order.id)
            with ledger.lock:
                ledger.added.append(order.id)
            roll = rng.random()
            if roll < 0.15:
                ledger.count(
                    EventType.PROCESSING, await store.claim_pending(now(), rng.randint(1, 5))
                )
            elif roll < 0.35:
                held = await store.acquire(owner, rng.randint(1, 4), LEASE_S)
                with ledger.lock:
                    ledger.acquired += [Acquired(h.order.id, h.token, owner) for h in held]
                for h in held:
                    holding[h.order.id] = h.token
                    action = rng.choice(["ship", "fail", "again", "handback", "release", "keep"])
                    order_id, token = h.order.id, h.token
                    if action == "keep":  # renewed, or retired, later
                        continue
                    del holding[order_id]
                    if action == "ship":
                        await write(store, owner, order_id, token, Event.SHIP, None)
                    elif action == "fail":
                        reason = rng.choice(["timeout", "HTTP 500"])
                        await write(store, owner, order_id, token, Event.FAIL, reason)
                    elif action == "again":
                        if await write(
                            store, owner, order_id, token, Event.REATTEMPT, "attempt 1 failed"
                        ):
                            await write(store, owner, order_id, token, Event.SHIP, None)
                    elif action == "handback":
                        await write(store, owner, order_id, token, Event.HANDBACK, "let go")
                    else:
                        await write(store, owner, order_id, token, Event.RELEASE, "shutdown")
            elif roll < 0.45:
                with contextlib.suppress(OrderConflict, OrderNotFound):
                    await store.transition(rng.choice(mine), Event.CANCEL, now(), "user")
                    ledger.count(EventType.CANCELLED)
            elif roll < 0.5:
                victim = rng.choice(mine)
                try:
                    await store.delete_pending(victim, now())
                except (OrderConflict, OrderNotFound):
                    pass
                else:
                    with ledger.lock:
                        ledger.deleted.append(victim)
            elif roll < 0.55:  # an operator retries one failed order
                with contextlib.suppress(IllegalTransition, OrderNotFound):
                    await store.transition(rng.choice(mine), Event.RETRY, now(), "operator")
                    ledger.count(EventType.RETRIED)
            elif roll < 0.6:  # an operator retries the timeouts of a time window, in batches
                start = BASE_TIME + timedelta(microseconds=rng.randint(0, 20_000))
                where = OrderFilter(
                    start=start, end=start + timedelta(milliseconds=3), reason_contains="TIME"
                )
                after: str | None = None
                while True:
                    moved, after = await store.transition_matching(
                        Event.RETRY,
                        OrderStatus.FAILED,
                        where,
                        now(),
                        "bulk retry",
                        limit=3,
                        after=after,
                    )
                    ledger.count(EventType.RETRIED, len(moved))
                    if after is None:
                        break
            elif roll < 0.63:  # an operator cancels the processing orders of a short window
                start = BASE_TIME + timedelta(microseconds=rng.randint(0, 20_000))
                where = OrderFilter(start=start, end=start + timedelta(microseconds=300))
                moved, _ = await store.transition_matching(
                    Event.CANCEL, OrderStatus.PROCESSING, where, now(), "bulk cancel", limit=5
                )
                ledger.count(EventType.CANCELLED, len(moved))
            elif roll < 0.73:  # a heartbeat that lost track of one order it holds
                known = dict(holding)
                if known and rng.random() < 0.5:
                    del known[rng.choice(sorted(known))]
                lost = await store.renew(owner, known, LEASE_S, now())
                for order_id in set(holding) - set(known) | lost:
                    holding.pop(order_id, None)
            elif roll < 0.75:
                retired = await store.retire(owner, now())
                with ledger.lock:
                    ledger.retired += retired
                holding.clear()
            if n % 7 == 0:
                await asyncio.sleep(0)
        retired = await store.retire(owner, now())  # a clean stop hands back the rest
        with ledger.lock:
            ledger.retired += retired

    def thread_main(thread_no: int) -> None:
        async def run() -> None:
            handle = await another_handle(shared)
            try:
                await asyncio.gather(
                    *(worker(handle, thread_no * 100 + t) for t in range(size.tasks))
                )
            finally:
                if handle is not shared:
                    await handle.close()

        asyncio.run(run())

    threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(size.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert not any(thread.is_alive() for thread in threads)


async def _check(store: OrderStore, size: Size, ledger: Ledger) -> None:
    added, deleted = ledger.added, set(ledger.deleted)
    assert len(added) == len(set(added)) == size.threads * size.tasks * size.orders
    assert len(deleted) == len(ledger.deleted)
    if isinstance(store, (InMemoryOrderStore, SqliteOrderStore)):  # their own checks
        assert list(store.check_invariants()) == []
        assert len(store) == len(added) - len(deleted)

    # Counts by status equal a recount of every order.
    orders, cursor = [], None
    while True:
        page = await store.list_orders(OrderQuery(limit=1000, cursor=cursor))
        orders += page.orders
        if (cursor := page.next_cursor) is None:
            break
    assert {o.id for o in orders} == set(added) - deleted
    recount = Counter(o.status for o in orders)
    assert await store.count_by_status() == {s: recount[s] for s in OrderStatus}

    # The event log: seqs 1, 2, 3, … with no gap, one event per change made.
    await store.sequence_events()
    events = await store.read_events(0, 1_000_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert await store.last_event_seq() == len(events)
    by_order: dict[str, list[OrderEvent]] = defaultdict(list)
    for event in events:
        by_order[event.order_id].append(event)
    assert set(by_order) == set(added)
    for order in orders:  # each history entry is one change, with its event
        assert [(e.status, e.reason) for e in by_order[order.id]] == [
            (h.status, h.reason) for h in order.history
        ]
    for order_id in deleted:
        assert by_order[order_id][-1].type is EventType.DELETED
        assert by_order[order_id][-2].status is OrderStatus.PENDING
    types = Counter(e.type for e in events)
    writes = Counter(w.event for w in ledger.written)
    assert types[EventType.SUBMITTED] == len(added)
    assert types[EventType.DELETED] == len(deleted)
    assert types[EventType.PROCESSING] == ledger.changes[EventType.PROCESSING]
    assert types[EventType.SHIPPED] == writes[Event.SHIP]
    assert types[EventType.FAILED] == writes[Event.FAIL]
    assert types[EventType.ATTEMPT_FAILED] == writes[Event.REATTEMPT]
    assert types[EventType.CANCELLED] == ledger.changes[EventType.CANCELLED]
    assert types[EventType.RETRIED] == ledger.changes[EventType.RETRIED]
    lost_track = sum(1 for e in events if e.reason is not None and "lost track" in e.reason)
    handed = writes[Event.HANDBACK] + writes[Event.RELEASE] + ledger.retired + lost_track
    assert types[EventType.RELEASED] == handed

    # No order shipped twice; nothing retried that was not failed.
    for order_events in by_order.values():
        assert sum(e.type is EventType.SHIPPED for e in order_events) <= 1
        for before, event in itertools.pairwise(order_events):
            if event.type is EventType.RETRIED:
                assert before.status is OrderStatus.FAILED

    # No order held by two owners: every hold of an order has its own token (in one process's
    # store, every hold at all: one counter); an order was acquired at most once each time it
    # was made ready (claimed, or handed back); and every write made under a hold was made by
    # the owner that acquired that very token of that order.
    holds = {(a.order_id, a.token): a for a in ledger.acquired}
    assert len(holds) == len(ledger.acquired)
    if not store.shared:
        assert len({a.token for a in ledger.acquired}) == len(ledger.acquired)
    made_ready = Counter(
        e.order_id
        for e in events
        if e.type is EventType.PROCESSING
        or (e.type is EventType.RELEASED and e.status is OrderStatus.PROCESSING)
    )
    acquisitions = Counter(a.order_id for a in ledger.acquired)
    for order_id, times in acquisitions.items():
        assert times <= made_ready[order_id], order_id
    assert sum(acquisitions.values()) <= sum(made_ready.values())  # nothing acquired unready
    for w in ledger.written:
        assert holds[w.order_id, w.token] == Acquired(w.order_id, w.token, w.owner)

    # Every holder retired: no order is held any more, each processing one is ready once.
    processing = {o.id for o in orders if o.status is OrderStatus.PROCESSING}
    last = await store.acquire("last", len(processing) + 10, LEASE_S)
    assert sorted(h.order.id for h in last) == sorted(processing)
    if isinstance(store, (InMemoryOrderStore, SqliteOrderStore)):
        assert list(store.check_invariants()) == []
