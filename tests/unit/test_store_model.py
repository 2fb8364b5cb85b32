"""A Hypothesis state machine drives a store of each backend (holders and operators alike) and
checks it against a plain model: statuses, holds and tokens, the ready orders, counts and
failure reasons, and the event log (one event per change made, none for a change refused).
SQLite and PostgreSQL run fewer examples: each costs a file or a schema and a few hundred
statements."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orderflow.domain import (
    EVENT_TYPE,
    Event,
    EventType,
    Hold,
    Item,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    ReasonCount,
    ends_hold,
    lost_track,
    new_order,
    new_order_id,
    order_id_time,
    sources_of,
)
from orderflow.errors import IllegalTransition, NotHeld, OrderConflict
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.sqlite import SqliteOrderStore
from tests.backends import BACKENDS, open_store
from tests.helpers import ALLOWED as TABLE

OWNERS = ("a", "b")
LEASE_S = 15.0
REASONS = (None, "timeout", "HTTP 503", "carrier Timeout", "refused")
HOLDER_EVENTS = (Event.SHIP, Event.FAIL, Event.REATTEMPT, Event.HANDBACK, Event.RELEASE)
EventKey = tuple[EventType, str, OrderStatus | None, str | None]


def _contains(reason: str | None, part: str | None) -> bool:
    return part is None or (reason is not None and part.lower() in reason.lower())


class StoreModel(RuleBasedStateMachine):
    backend = "memory"  # a subclass per backend says which

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.opened = open_store(self.backend)
        self.store: OrderStore = self.run(self.opened.__aenter__())
        self.status: dict[str, OrderStatus] = {}
        self.reason: dict[str, str | None] = {}  # of the latest history entry
        self.holds: dict[str, Hold] = {}
        self.ready: set[str] = set()  # processing, held by nobody
        self.top_token = 0
        self.last_token: dict[str, int] = {}  # the newest token each order was held under
        self.seq = 0  # the last event checked
        self.shipped: Counter[str] = Counter()
        self.time = datetime(2026, 1, 1, tzinfo=UTC)
        self.n = 0

    def open_store(self) -> OrderStore:
        return InMemoryOrderStore()

    def teardown(self) -> None:
        try:
            self.run(self.opened.__aexit__(None, None, None))
        finally:
            self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def tick(self) -> datetime:
        self.time += timedelta(microseconds=1)
        return self.time

    def expect(self, *events: EventKey) -> None:
        """The store's log holds exactly `events` since the last check (any order within the
        step), under the next seqs."""
        while self.run(self.store.sequence_events()) < 0:  # (-1: another numbers them now)
            pass
        new = self.run(self.store.read_events(self.seq, 100_000))
        assert [e.seq for e in new] == list(range(self.seq + 1, self.seq + 1 + len(new)))
        assert Counter((e.type, e.order_id, e.status, e.reason) for e in new) == Counter(events)
        self.seq += len(new)
        self.shipped.update(e.order_id for e in new if e.type is EventType.SHIPPED)

    def moved(self, order_id: str, event: Event, reason: str | None) -> EventKey:
        """Apply `event` to the model; its event."""
        target = TABLE[self.status[order_id], event]
        self.status[order_id] = target
        self.reason[order_id] = reason
        if ends_hold(event):
            self.holds.pop(order_id, None)
        if event is Event.HANDBACK:
            self.ready.add(order_id)
        elif target is not OrderStatus.PROCESSING:
            self.ready.discard(order_id)
        return (EVENT_TYPE[event], order_id, target, reason)

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.status)))

    # -- rules --------------------------------------------------------------------------------

    @initialize(count=st.integers(1, 6))
    def some_orders(self, count: int) -> None:
        for _ in range(count):
            self.submit()

    @rule()
    def submit(self) -> None:
        at = self.tick()
        self.n += 1
        order = new_order(new_order_id(at, self.n), f"c{self.n}", (Item("w", 1),), at)
        assert self.run(self.store.add(order)) is None
        self.status[order.id] = OrderStatus.PENDING
        self.reason[order.id] = None
        self.expect((EventType.SUBMITTED, order.id, OrderStatus.PENDING, None))

    @precondition(lambda self: OrderStatus.PENDING in self.status.values())
    @rule(
        limit=st.integers(1, 4),
        older_than=st.none() | st.integers(0, 30),
        fetch_by=st.sampled_from((None, *OWNERS)),
    )
    def trigger(self, limit: int, older_than: int | None, fetch_by: str | None) -> None:
        """A trigger claims, and a processor (if any) fetches what it claimed."""
        self.claim(limit, older_than)
        if fetch_by is not None and self.ready:
            self.acquire(fetch_by, limit)

    def claim(self, limit: int, older_than: int | None) -> None:
        before = None if older_than is None else self.time - timedelta(microseconds=older_than)
        claimed = self.run(self.store.claim_pending(self.tick(), limit, before))
        pending = sorted(
            i
            for i, s in self.status.items()
            if s is OrderStatus.PENDING and (before is None or order_id_time(i) < before)
        )
        assert claimed == min(limit, len(pending))
        for order_id in pending[:claimed]:
            self.status[order_id] = OrderStatus.PROCESSING
            self.reason[order_id] = None
            self.ready.add(order_id)
        self.expect(
            *((EventType.PROCESSING, i, OrderStatus.PROCESSING, None) for i in pending[:claimed])
        )

    @precondition(lambda self: bool(self.ready))
    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 3))
    def acquire(self, owner: str, limit: int) -> None:
        held = self.run(self.store.acquire(owner, limit, LEASE_S))
        got = [h.order.id for h in held]
        # Roughly oldest first: any of the ready ones, never one held, never one twice.
        assert len(set(got)) == len(got) == min(limit, len(self.ready))
        assert set(got) <= self.ready
        for h in held:
            assert h.order.status is OrderStatus.PROCESSING
            # A new token for every acquisition (in one process's store, from one counter for
            # all orders).
            assert h.token > self.last_token.get(h.order.id, 0)
            if not self.store.shared:
                assert h.token > self.top_token
            self.last_token[h.order.id] = h.token
            self.top_token = max(self.top_token, h.token)
            self.holds[h.order.id] = Hold(owner, h.token)
            self.ready.discard(h.order.id)
        self.expect()

    def write(
        self, order_id: str, owner: str, token: int, event: Event, reason: str | None, batched: bool
    ) -> None:
        """A holder's write, through `write_outcomes` or `transition(hold=…)`."""
        legal = (self.status[order_id], event) in TABLE
        ours = self.holds.get(order_id) == Hold(owner, token)
        shipment = {"t": order_id[-4:]} if event is Event.SHIP else None
        at = self.tick()
        if batched:
            [done] = self.run(
                self.store.write_outcomes(
                    owner, [Outcome(order_id, token, event, at, reason, shipment)]
                )
            )
            assert done == (legal and ours)
            written = self.run(self.store.get_order(order_id)) if done else None
        else:
            try:
                written = self.run(
                    self.store.transition(order_id, event, at, reason, hold=Hold(owner, token))
                )
            except IllegalTransition:
                assert not legal
                written = None
            except NotHeld:
                assert legal
                assert not ours
                written = None
            else:
                assert legal
                assert ours
        if written is None:
            self.expect()
            return
        self.expect(self.moved(order_id, event, reason))
        assert written.status is self.status[order_id]
        if event is Event.SHIP and batched:
            assert written.shipment == shipment

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), batched=st.booleans())
    def holders_write(self, data: st.DataObject, batched: bool) -> None:
        """Holders write the outcomes of some orders they hold: mostly as themselves under
        their current token, sometimes as another owner or under an older token."""
        picked = data.draw(
            st.lists(st.sampled_from(sorted(self.holds)), min_size=1, max_size=3, unique=True)
        )
        for order_id in picked:
            hold = self.holds.get(order_id)
            if hold is None:  # handed back by an earlier write of this step
                continue
            event = data.draw(st.sampled_from(HOLDER_EVENTS))
            reason = None if event is Event.SHIP else data.draw(st.sampled_from(REASONS))
            who = data.draw(st.sampled_from(("holder", "holder", "holder", "impostor", "stale")))
            owner = next(o for o in OWNERS if o != hold.owner) if who == "impostor" else hold.owner
            token = hold.token - 1 if who == "stale" else hold.token
            self.write(order_id, owner, token, event, reason, batched)

    @precondition(lambda self: bool(self.status))
    @rule(
        data=st.data(),
        owner=st.sampled_from(OWNERS),
        event=st.sampled_from(HOLDER_EVENTS),
        token=st.integers(0, 50),
        batched=st.booleans(),
    )
    def anyone_writes(
        self, data: st.DataObject, owner: str, event: Event, token: int, batched: bool
    ) -> None:
        """A write under a hold picked at random: to any order, mostly refused."""
        self.write(self.pick(data), owner, token, event, "late", batched)

    @precondition(lambda self: bool(self.ready))
    @rule(data=st.data(), event=st.sampled_from([Event.RELEASE, Event.HANDBACK, Event.CANCEL]))
    def ready_order_moved_without_a_hold(self, data: st.DataObject, event: Event) -> None:
        """A ready order (claimed, held by nobody) moved by a transition without a hold: it may
        then wait in the ready queue twice, and must still be handed out once."""
        order_id = data.draw(st.sampled_from(sorted(self.ready)))
        order = self.run(self.store.transition(order_id, event, self.tick(), "moved"))
        self.expect(self.moved(order_id, event, "moved"))
        assert order.status is self.status[order_id]

    @precondition(lambda self: bool(self.status))
    @rule(
        data=st.data(),
        event=st.sampled_from([Event.RETRY, Event.CANCEL, *HOLDER_EVENTS]),
        reason=st.sampled_from(REASONS),
    )
    def operator_moves_one(self, data: st.DataObject, event: Event, reason: str | None) -> None:
        """An operator's retry or cancel (or any move made without a hold), of an order it
        applies to, mostly."""
        movable = sorted(i for i, s in self.status.items() if (s, event) in TABLE)
        if movable and data.draw(st.integers(0, 3)):
            order_id = data.draw(st.sampled_from(movable))
        else:
            order_id = self.pick(data)
        legal = (self.status[order_id], event) in TABLE
        try:
            order = self.run(self.store.transition(order_id, event, self.tick(), reason))
        except IllegalTransition:
            assert not legal
            self.expect()
            return
        assert legal
        self.expect(self.moved(order_id, event, reason))
        assert order.status is self.status[order_id]

    @precondition(lambda self: bool(self.status))
    @rule(
        data=st.data(),
        event=st.sampled_from([Event.RETRY, Event.CANCEL]),
        contains=st.sampled_from([None, "time", "HTTP"]),
        bounded=st.booleans(),
        limit=st.integers(1, 3),
    )
    def operator_moves_many(
        self,
        data: st.DataObject,
        event: Event,
        contains: str | None,
        bounded: bool,
        limit: int,
    ) -> None:
        source = data.draw(st.sampled_from(sources_of(event)))
        start = end = None
        if bounded:
            low, high = sorted(
                data.draw(st.lists(st.sampled_from(sorted(self.status)), min_size=2, max_size=2))
            )
            start, end = order_id_time(low), order_id_time(high)
        where = OrderFilter(start=start, end=end, reason_contains=contains)
        after: str | None = None
        expected: list[EventKey] = []
        while True:
            matching = sorted(
                i
                for i, s in self.status.items()
                if s is source
                and _contains(self.reason[i], contains)
                and (start is None or order_id_time(i) >= start)
                and (end is None or order_id_time(i) < end)
                and (after is None or i > after)
            )
            moved, after = self.run(
                self.store.transition_matching(
                    event, source, where, self.tick(), "bulk", limit=limit, after=after
                )
            )
            assert moved == matching[:limit]
            assert after == (moved[-1] if len(moved) == limit else None)
            if event is Event.RETRY:  # nothing retried that was not failed
                assert all(self.status[i] is OrderStatus.FAILED for i in moved)
            expected += [self.moved(i, event, "bulk") for i in moved]
            if after is None:
                break
        self.expect(*expected)

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), stale=st.booleans())
    def renew(self, data: st.DataObject, stale: bool) -> None:
        """A heartbeat: the owner names what it knows it holds; it may have lost track of some
        (an acquire whose answer was lost), or name a token that is no longer its."""
        owner = data.draw(st.sampled_from(sorted({h.owner for h in self.holds.values()})))
        mine = {i: h.token for i, h in self.holds.items() if h.owner == owner}
        forgotten = data.draw(st.lists(st.sampled_from(sorted(mine)), unique=True))
        known = {i: t for i, t in mine.items() if i not in forgotten}
        if stale:
            wrong = self.pick(data)
            known[wrong] = known.get(wrong, self.top_token) + 1_000
        lost = self.run(self.store.renew(owner, known, LEASE_S, self.tick()))
        assert lost == {i for i, t in known.items() if self.holds.get(i) != Hold(owner, t)}
        reason = lost_track(owner)
        handed_back = [i for i, t in mine.items() if known.get(i) != t]
        self.expect(*(self.moved(i, Event.HANDBACK, reason) for i in handed_back))

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def retire(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(OWNERS))
        mine = [i for i, h in self.holds.items() if h.owner == owner]
        assert self.run(self.store.retire(owner, self.tick())) == len(mine)
        reason = f"handed back: {owner} stopped"
        self.expect(*(self.moved(i, Event.HANDBACK, reason) for i in mine))

    @precondition(lambda self: bool(self.ready))
    @rule()
    def release_unshared(self) -> None:
        ready = [] if self.store.shared else sorted(self.ready)  # shared: the others ship them
        assert self.run(self.store.release_unshared(self.tick(), "shutdown")) == len(ready)
        self.expect(*(self.moved(i, Event.RELEASE, "shutdown") for i in ready))

    @precondition(lambda self: bool(self.status))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        order_id = self.pick(data)
        try:
            self.run(self.store.delete_pending(order_id, self.tick()))
        except OrderConflict:
            assert self.status[order_id] is not OrderStatus.PENDING
            self.expect()
            return
        assert self.status.pop(order_id) is OrderStatus.PENDING
        del self.reason[order_id]
        self.expect((EventType.DELETED, order_id, None, None))

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        if isinstance(self.store, (InMemoryOrderStore, SqliteOrderStore)):  # their own checks
            assert list(self.store.check_invariants()) == []
            assert len(self.store) == len(self.status)
        page = self.run(self.store.list_orders(OrderQuery(limit=1000)))
        assert {o.id: o.status for o in page.orders} == self.status
        assert {o.id: o.history[-1].reason for o in page.orders} == self.reason
        assert [o.id for o in page.orders] == sorted(self.status)
        for status in OrderStatus:
            listed = self.run(self.store.list_orders(OrderQuery(status=status, limit=1000)))
            assert [o.id for o in listed.orders] == sorted(
                i for i, s in self.status.items() if s is status
            )

    @invariant()
    def counts_and_reasons_equal_a_recount(self) -> None:
        recount = Counter(self.status.values())
        assert self.run(self.store.count_by_status()) == {s: recount[s] for s in OrderStatus}
        reasons = Counter(
            self.reason[i] or "" for i, s in self.status.items() if s is OrderStatus.FAILED
        )
        stats = self.run(self.store.stats())
        assert stats.failed_reasons == [
            ReasonCount(reason, count)
            for reason, count in sorted(reasons.items(), key=lambda rc: (-rc[1], rc[0]))
        ]

    @invariant()
    def no_order_shipped_twice_and_holds_only_on_processing(self) -> None:
        assert all(count == 1 for count in self.shipped.values())
        assert all(self.status[i] is OrderStatus.PROCESSING for i in self.holds)
        assert not set(self.holds) & self.ready
        assert self.run(self.store.last_event_seq()) == self.seq


SETTINGS = {
    "memory": settings(max_examples=50, stateful_step_count=40, deadline=None),
    "sqlite": settings(max_examples=25, stateful_step_count=40, deadline=None),
    "postgres": settings(max_examples=30, stateful_step_count=40, deadline=None),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_store_agrees_with_a_plain_model(backend: str) -> None:
    machine = type(f"StoreModel_{backend}", (StoreModel,), {"backend": backend})
    run_state_machine_as_test(machine, settings=SETTINGS[backend])
