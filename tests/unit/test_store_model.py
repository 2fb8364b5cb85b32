"""A Hypothesis state machine drives the in-memory store and checks it against a plain model."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orderflow.domain import Event, Item, OrderQuery, OrderStatus, new_order, new_order_id
from orderflow.errors import IllegalTransition, OrderConflict, OrderNotFound
from orderflow.store.memory import InMemoryOrderStore
from tests.unit.test_domain import ALLOWED as TABLE

OWNERS = ("a", "b")


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = InMemoryOrderStore()
        self.status: dict[str, OrderStatus] = {}
        self.holder: dict[str, str] = {}
        self.ready: list[str] = []  # claimed, not yet acquired, oldest first
        self.time = datetime(2026, 1, 1, tzinfo=UTC)
        self.n = 0

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def tick(self) -> datetime:
        self.time += timedelta(microseconds=1)
        return self.time

    @rule()
    def submit(self) -> None:
        at = self.tick()
        self.n += 1
        order = new_order(new_order_id(at, self.n), f"c{self.n}", (Item("w", 1),), at)
        self.run(self.store.add(order))
        self.status[order.id] = OrderStatus.PENDING

    @rule(limit=st.integers(1, 4))
    def claim(self, limit: int) -> None:
        claimed = self.run(self.store.claim_pending(self.tick(), limit))
        pending = sorted(i for i, s in self.status.items() if s is OrderStatus.PENDING)
        assert claimed == min(limit, len(pending))
        for order_id in pending[:claimed]:
            self.status[order_id] = OrderStatus.PROCESSING
            self.ready.append(order_id)

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 3))
    def acquire(self, owner: str, limit: int) -> None:
        got = [o.id for o in self.run(self.store.acquire(owner, limit))]
        live = [
            i
            for i in self.ready
            if self.status[i] is OrderStatus.PROCESSING and i not in self.holder
        ]
        # roughly oldest first; a store may hand out any of them, but never one twice
        assert len(set(got)) == len(got) == min(limit, len(live))
        assert set(got) <= set(live)
        for order_id in got:
            self.holder[order_id] = owner
            self.ready.remove(order_id)

    @precondition(lambda self: bool(self.status))
    @rule(
        data=st.data(),
        event=st.sampled_from([e for e in Event if e is not Event.START]),
        owner=st.sampled_from((None, *OWNERS)),
    )
    def transition(self, data: st.DataObject, event: Event, owner: str | None) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.status)))
        current = self.status[order_id]
        target = TABLE.get((current, event))
        try:
            order = self.run(self.store.transition(order_id, event, self.tick(), owner=owner))
        except IllegalTransition:
            assert target is None
            return
        except OrderConflict:
            assert owner is not None
            assert self.holder.get(order_id) != owner
            return
        assert target is not None
        assert owner is None or self.holder.get(order_id) == owner
        assert order.status is target
        self.status[order_id] = target
        if target is not OrderStatus.PROCESSING or event is Event.HANDBACK:
            self.holder.pop(order_id, None)
        if event is Event.HANDBACK and order_id not in self.ready:
            self.ready.append(order_id)
        if order_id in self.ready and target is not OrderStatus.PROCESSING:
            self.ready.remove(order_id)

    @precondition(lambda self: bool(self.status))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.status)))
        try:
            self.run(self.store.delete_pending(order_id))
        except OrderConflict:
            assert self.status[order_id] is not OrderStatus.PENDING
            return
        except OrderNotFound:  # pragma: no cover - the model only names stored orders
            raise AssertionError(order_id) from None
        assert self.status.pop(order_id) is OrderStatus.PENDING

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert list(self.store.check_invariants()) == []
        page = self.run(self.store.list_orders(OrderQuery(limit=1000)))
        assert {o.id: o.status for o in page.orders} == self.status
        assert [o.id for o in page.orders] == sorted(self.status)
        for status in OrderStatus:
            listed = self.run(self.store.list_orders(OrderQuery(status=status, limit=1000)))
            assert [o.id for o in listed.orders] == sorted(
                i for i, s in self.status.items() if s is status
            )


StoreModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestStoreModel = StoreModel.TestCase
