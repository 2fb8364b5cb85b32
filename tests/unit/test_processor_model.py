"""A Hypothesis state machine drives the service and processor (fake shipper) and checks the
outcome against a plain model: who ships, who fails, who is cancelled, and nobody twice."""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orderflow.domain import OrderStatus
from orderflow.errors import IllegalTransition, OrderConflict
from orderflow.processor import Processor
from orderflow.service import OrderService
from orderflow.shipping import ShippingError
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, ManualClock, make_order


class ProcessorModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = InMemoryOrderStore()
        self.shipper = FakeShipper()
        clock = ManualClock()
        processor = Processor(self.store, self.shipper, clock, concurrency=3, claim_batch=4)
        self.service = OrderService(self.store, processor, clock)
        self.loop.run_until_complete(processor.start())
        self.model: dict[str, OrderStatus] = {}
        self.doomed: set[str] = set()  # orders whose shipment will fail

    def teardown(self) -> None:
        self.loop.run_until_complete(self.service.processor.stop(grace_s=0))
        self.loop.close()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @rule(fails=st.booleans())
    def submit(self, fails: bool) -> None:
        order = self.run(self.service.submit("Ada", make_order().items))
        self.model[order.id] = OrderStatus.PENDING
        if fails:
            self.doomed.add(order.id)
            self.shipper.fail_next(order.id, ShippingError("refused"))

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
        order_id = data.draw(st.sampled_from(sorted(self.model)))
        try:
            self.run(self.service.cancel_order(order_id))
        except IllegalTransition:
            if self.model[order_id] is OrderStatus.PROCESSING:  # it finished first
                actual = self.run(self.store.get_order(order_id)).status
                doomed = order_id in self.doomed
                assert actual is (OrderStatus.FAILED if doomed else OrderStatus.SHIPPED)
                self.model[order_id] = actual
            else:
                assert self.model[order_id] is not OrderStatus.PENDING
            return
        assert self.model[order_id] in (OrderStatus.PENDING, OrderStatus.PROCESSING)
        self.model[order_id] = OrderStatus.CANCELLED

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.model)))
        try:
            self.run(self.service.delete_order(order_id))
        except OrderConflict:
            assert self.model[order_id] is not OrderStatus.PENDING
            return
        assert self.model.pop(order_id) is OrderStatus.PENDING

    @rule()
    def settle(self) -> None:
        async def until_settled() -> None:
            for _ in range(2000):
                counts = await self.store.count_by_status()
                if not counts.get(OrderStatus.PROCESSING):
                    return
                await asyncio.sleep(0)
            raise AssertionError("orders stuck in processing")

        self.run(until_settled())
        for order_id, status in self.model.items():
            if status is OrderStatus.PROCESSING:
                doomed = order_id in self.doomed
                self.model[order_id] = OrderStatus.FAILED if doomed else OrderStatus.SHIPPED

    @invariant()
    def matches_the_model(self) -> None:
        assert list(self.store.check_invariants()) == []
        assert all(count == 1 for count in self.shipper.shipped.values())
        for order_id, status in self.model.items():
            actual = self.run(self.store.get_order(order_id)).status
            if status is OrderStatus.PROCESSING:  # may have finished already
                assert actual in (status, OrderStatus.SHIPPED, OrderStatus.FAILED)
            else:
                assert actual is status
            if actual is OrderStatus.SHIPPED:
                assert self.shipper.shipped[order_id] == 1
            elif actual is not OrderStatus.PROCESSING:  # its final write may be under way
                assert self.shipper.shipped[order_id] == 0
        assert len(self.store) == len(self.model)


ProcessorModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestProcessorModel = ProcessorModel.TestCase
