"""A Hypothesis state machine drives the service and processor (fake shipper) and checks the
outcome against a plain model: who ships, who fails, who is cancelled or retried by an
operator, and nobody twice."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orderflow.claimer import Claimer
from orderflow.domain import Event, OrderFilter, OrderStatus
from orderflow.errors import IllegalTransition
from orderflow.processor import Processor, ProcessorSettings
from orderflow.service import OrderService
from orderflow.shipping import PermanentFailure
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, ManualClock, make_order, settled


class ProcessorModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = InMemoryOrderStore()
        self.shipper = FakeShipper()
        clock = ManualClock()
        processor = Processor(self.store, self.shipper, clock, ProcessorSettings(concurrency=3))
        claimer = Claimer(self.store, clock, processor.wake, batch=4)
        self.service = OrderService(self.store, claimer, processor, clock)
        self.run(self.service.start())
        self.model: dict[str, OrderStatus] = {}
        self.doomed: set[str] = set()  # orders whose next shipment will fail

    def teardown(self) -> None:
        self.run(self.service.stop(grace_s=0))
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def status_of(self, order_id: str) -> OrderStatus:
        return self.run(self.store.get_order(order_id)).status  # type: ignore[no-any-return]

    def finished(self, order_id: str, actual: OrderStatus) -> None:
        """A processing order of the model is `actual` now; it may have finished meanwhile."""
        assert actual in (OrderStatus.PROCESSING, self.outcome(order_id))
        if actual is not OrderStatus.PROCESSING:
            self.model[order_id] = actual
            self.doomed.discard(order_id)

    def outcome(self, order_id: str) -> OrderStatus:
        return OrderStatus.FAILED if order_id in self.doomed else OrderStatus.SHIPPED

    def catch_up(self) -> None:
        for order_id, status in list(self.model.items()):
            if status is OrderStatus.PROCESSING:
                self.finished(order_id, self.status_of(order_id))

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.model)))

    @rule(fails=st.booleans())
    def submit(self, fails: bool) -> None:
        submitted = self.run(self.service.submit("Ada", make_order().items))
        self.model[submitted.order_id] = OrderStatus.PENDING
        if fails:
            self.doomed.add(submitted.order_id)
            self.shipper.fail_next(submitted.order_id, PermanentFailure("refused"))

    @rule()
    def trigger(self) -> None:
        claimed = self.run(self.service.trigger_processing())
        pending = [i for i, s in self.model.items() if s is OrderStatus.PENDING]
        assert claimed == len(pending)
        for order_id in pending:
            self.model[order_id] = OrderStatus.PROCESSING

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        order_id = self.pick(data)
        try:
            self.run(self.service.cancel_order(order_id))
        except IllegalTransition:
            if self.model[order_id] is OrderStatus.PROCESSING:  # it finished first
                actual = self.status_of(order_id)
                assert actual is not OrderStatus.PROCESSING
                self.finished(order_id, actual)
            else:
                assert self.model[order_id] not in (OrderStatus.PENDING, OrderStatus.PROCESSING)
            return
        assert self.model[order_id] in (OrderStatus.PENDING, OrderStatus.PROCESSING)
        self.model[order_id] = OrderStatus.CANCELLED

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """An operator sends a failed order back to pending; it ships next time (its shipper
        failure was used up)."""
        self.catch_up()
        failed = sorted(i for i, s in self.model.items() if s is OrderStatus.FAILED)
        order_id = data.draw(st.sampled_from(failed)) if failed else self.pick(data)
        try:
            retried = self.run(self.service.retry_order(order_id))
        except IllegalTransition:
            assert self.model[order_id] is not OrderStatus.FAILED
            return
        assert self.model[order_id] is OrderStatus.FAILED
        assert retried.status is OrderStatus.PENDING
        self.model[order_id] = OrderStatus.PENDING

    @rule(event=st.sampled_from([Event.RETRY, Event.CANCEL]))
    def act_in_bulk(self, event: Event) -> None:
        self.catch_up()  # the loop stands still from here to the end of the bulk action
        sources = (
            (OrderStatus.FAILED,)
            if event is Event.RETRY
            else (OrderStatus.PENDING, OrderStatus.PROCESSING)
        )
        movable = [i for i, s in self.model.items() if s in sources]
        assert self.run(self.service.act_in_bulk(event, OrderFilter(), "bulk")) == len(movable)
        target = OrderStatus.PENDING if event is Event.RETRY else OrderStatus.CANCELLED
        for order_id in movable:
            self.model[order_id] = target

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        order_id = self.pick(data)
        try:
            self.run(self.service.delete_order(order_id))
        except IllegalTransition:
            assert self.model[order_id] is not OrderStatus.PENDING
            return
        assert self.model.pop(order_id) is OrderStatus.PENDING

    @rule()
    def settle(self) -> None:
        self.run(settled(self.store))
        self.catch_up()
        assert OrderStatus.PROCESSING not in self.model.values()
        assert self.service.processor.holdings == {}

    @invariant()
    def matches_the_model(self) -> None:
        assert list(self.store.check_invariants()) == []
        assert all(count == 1 for count in self.shipper.shipped.values())
        for order_id, status in self.model.items():
            actual = self.status_of(order_id)
            if status is OrderStatus.PROCESSING:  # may have finished already
                assert actual in (status, self.outcome(order_id))
            else:
                assert actual is status
            if actual is OrderStatus.SHIPPED:
                assert self.shipper.shipped[order_id] == 1
            elif actual is not OrderStatus.PROCESSING:  # its final write may be under way
                assert self.shipper.shipped[order_id] == 0
        assert len(self.store) == len(self.model)


ProcessorModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestProcessorModel = ProcessorModel.TestCase
