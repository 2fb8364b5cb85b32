"""Every exit of a shipment: success, failure, timeout, retry, cancel, shutdown mid-flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orderflow.domain import Event, Order, OrderStatus
from orderflow.errors import ShuttingDown, StoreUnavailable
from orderflow.processor import Processor
from orderflow.service import OrderService
from orderflow.shipping import ShippingError, SimulatedShipper
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, ManualClock, make_order, wait_until_settled


@pytest.fixture
def held_shipper() -> FakeShipper:
    return FakeShipper(hold=True)


async def _service(
    store: InMemoryOrderStore, shipper: object, clock: ManualClock, **options: object
) -> OrderService:
    processor = Processor(store, shipper, clock, **options)  # type: ignore[arg-type]
    await processor.start()
    return OrderService(store, processor, clock)


@pytest.fixture
async def held_service(
    memory_store: InMemoryOrderStore, held_shipper: FakeShipper, clock: ManualClock
) -> AsyncIterator[OrderService]:
    service = await _service(memory_store, held_shipper, clock, concurrency=8, timeout_s=30)
    yield service
    await service.processor.stop(grace_s=0)


async def test_trigger_ships_every_pending_order_once(
    running_service: OrderService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    orders = [await running_service.submit("Ada", make_order().items) for _ in range(20)]
    assert await running_service.trigger_processing() == 20
    await wait_until_settled(memory_store)
    for order in orders:
        shipped = await memory_store.get_order(order.id)
        assert shipped.status is OrderStatus.SHIPPED
        assert [h.status for h in shipped.history] == ["pending", "processing", "shipped"]
    assert all(count == 1 for count in shipper.shipped.values())
    assert len(shipper.shipped) == 20
    assert list(memory_store.check_invariants()) == []


async def test_orders_submitted_after_a_trigger_wait_for_the_next(
    running_service: OrderService, memory_store: InMemoryOrderStore
) -> None:
    await running_service.submit("Ada", make_order().items)
    assert await running_service.trigger_processing() == 1
    late = await running_service.submit("Bob", make_order().items)
    await wait_until_settled(memory_store)
    assert (await memory_store.get_order(late.id)).status is OrderStatus.PENDING
    assert await running_service.trigger_processing() == 1


async def test_simultaneous_triggers_claim_each_order_once(
    running_service: OrderService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    for _ in range(50):
        await running_service.submit("Ada", make_order().items)
    counts = await asyncio.gather(*(running_service.trigger_processing() for _ in range(10)))
    assert sum(counts) == 50
    await wait_until_settled(memory_store)
    assert sorted(shipper.shipped.values()) == [1] * 50


async def test_shipper_error_fails_the_order_with_the_error_as_reason(
    running_service: OrderService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    order = await running_service.submit("Ada", make_order().items)
    shipper.fail_next(order.id, ShippingError("carrier on strike"))
    await running_service.trigger_processing()
    await wait_until_settled(memory_store)
    failed = await memory_store.get_order(order.id)
    assert failed.status is OrderStatus.FAILED
    assert failed.history[-1].reason == "carrier on strike"


async def test_error_without_message_is_named_by_its_type(
    running_service: OrderService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    order = await running_service.submit("Ada", make_order().items)
    shipper.fail_next(order.id, RuntimeError())
    await running_service.trigger_processing()
    await wait_until_settled(memory_store)
    assert (await memory_store.get_order(order.id)).history[-1].reason == "RuntimeError"


async def test_slow_shipment_times_out_and_fails(
    memory_store: InMemoryOrderStore, held_shipper: FakeShipper, clock: ManualClock
) -> None:
    service = await _service(memory_store, held_shipper, clock, timeout_s=0.001)
    try:
        order = await service.submit("Ada", make_order().items)
        await service.trigger_processing()
        for _ in range(1000):
            if (await memory_store.get_order(order.id)).status is OrderStatus.FAILED:
                break
            await asyncio.sleep(0.001)
        failed = await memory_store.get_order(order.id)
        assert failed.status is OrderStatus.FAILED
        assert failed.history[-1].reason == "timeout"
        assert order.id in held_shipper.cancelled  # the shipment itself was cancelled
    finally:
        await service.processor.stop(grace_s=0)


async def test_retries_record_each_attempt_then_ship(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> None:
    service = await _service(memory_store, shipper, clock, max_attempts=3, retry_backoff_s=0)
    try:
        order = await service.submit("Ada", make_order().items)
        shipper.fail_next(order.id, ShippingError("busy"), ShippingError("busy"))
        await service.trigger_processing()
        await wait_until_settled(memory_store)
        done = await memory_store.get_order(order.id)
        assert [h.status for h in done.history] == [
            "pending",
            "processing",
            "processing",
            "processing",
            "shipped",
        ]
        assert done.history[2].reason is not None
        assert "attempt 1 of 3 failed (busy)" in done.history[2].reason
        assert shipper.shipped[order.id] == 1
    finally:
        await service.processor.stop(grace_s=0)


async def test_retries_give_up_after_max_attempts(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> None:
    service = await _service(memory_store, shipper, clock, max_attempts=2, retry_backoff_s=0)
    try:
        order = await service.submit("Ada", make_order().items)
        shipper.fail_next(order.id, ShippingError("no"), ShippingError("still no"))
        await service.trigger_processing()
        await wait_until_settled(memory_store)
        done = await memory_store.get_order(order.id)
        assert done.status is OrderStatus.FAILED
        assert done.history[-1].reason == "still no"
        assert len(done.history) == 4
    finally:
        await service.processor.stop(grace_s=0)


async def test_cancel_during_shipment_cancels_the_task_and_never_ships(
    held_service: OrderService, held_shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    order = await held_service.submit("Ada", make_order().items)
    await held_service.trigger_processing()
    await held_shipper.started_event(order.id).wait()
    cancelled = await held_service.cancel_order(order.id)
    assert cancelled.status is OrderStatus.CANCELLED
    for _ in range(100):
        if order.id in held_shipper.cancelled:
            break
        await asyncio.sleep(0)
    assert order.id in held_shipper.cancelled
    held_shipper.release(order.id)
    assert held_service.processor.in_flight == 0
    final = await memory_store.get_order(order.id)
    assert final.status is OrderStatus.CANCELLED
    assert held_shipper.shipped[order.id] == 0
    # the worker survived its cancelled shipment and ships the next order
    other = await held_service.submit("Bob", make_order().items)
    held_shipper.release(other.id)
    await held_service.trigger_processing()
    await wait_until_settled(memory_store)
    assert (await memory_store.get_order(other.id)).status is OrderStatus.SHIPPED


async def test_cancel_while_held_drops_the_order_before_shipping(
    memory_store: InMemoryOrderStore, held_shipper: FakeShipper, clock: ManualClock
) -> None:
    service = await _service(memory_store, held_shipper, clock, concurrency=1)
    try:
        first = await service.submit("Ada", make_order().items)
        second = await service.submit("Bob", make_order().items)
        await service.trigger_processing()
        await held_shipper.started_event(first.id).wait()
        for _ in range(100):  # the fetcher holds the second order for the busy worker
            if service.processor.held:
                break
            await asyncio.sleep(0)
        assert service.processor.held == 1
        await service.cancel_order(second.id)
        held_shipper.release(first.id)
        await wait_until_settled(memory_store)
        assert held_shipper.shipped == {first.id: 1}
        assert second.id not in held_shipper.started
    finally:
        await service.processor.stop(grace_s=0)


async def test_cancel_of_a_ready_order_is_skipped_by_acquire(
    memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    order = make_order(clock)
    await memory_store.add(order)
    await memory_store.claim_pending(clock.now(), 10)
    await memory_store.transition(order.id, Event.CANCEL, clock.now())
    assert await memory_store.acquire("me", 10) == []


async def test_shutdown_releases_shipments_in_flight_with_the_reason(
    held_service: OrderService, held_shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    orders = [await held_service.submit("Ada", make_order().items) for _ in range(3)]
    await held_service.trigger_processing()
    for order in orders:
        await held_shipper.started_event(order.id).wait()
    await held_service.processor.stop(grace_s=0)
    for order in orders:
        back = await memory_store.get_order(order.id)
        assert back.status is OrderStatus.PENDING
        assert back.history[-1].reason == "shutdown: shipment interrupted"
    assert held_shipper.cancelled == {o.id for o in orders}
    with pytest.raises(ShuttingDown):
        await held_service.trigger_processing()


async def test_shutdown_lets_shipments_finish_within_the_grace(
    held_service: OrderService, held_shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    order = await held_service.submit("Ada", make_order().items)
    await held_service.trigger_processing()
    await held_shipper.started_event(order.id).wait()
    stopping = asyncio.create_task(held_service.processor.stop(grace_s=30))
    await asyncio.sleep(0)
    held_shipper.release(order.id)
    await stopping
    assert (await memory_store.get_order(order.id)).status is OrderStatus.SHIPPED


async def test_shutdown_hands_back_held_orders_not_started(
    memory_store: InMemoryOrderStore, held_shipper: FakeShipper, clock: ManualClock
) -> None:
    service = await _service(memory_store, held_shipper, clock, concurrency=1)
    orders = [await service.submit("Ada", make_order().items) for _ in range(5)]
    await service.trigger_processing()  # one ships, one is held, three stay ready
    await held_shipper.started_event(orders[0].id).wait()
    for _ in range(100):
        if service.processor.held:
            break
        await asyncio.sleep(0)
    await service.processor.stop(grace_s=0)
    reasons = [(await memory_store.get_order(o.id)).history[-1].reason for o in orders]
    assert reasons == ["shutdown: shipment interrupted"] + ["shutdown: not started"] * 4
    assert (await memory_store.count_by_status())[OrderStatus.PENDING] == 5
    assert list(memory_store.check_invariants()) == []


async def test_auto_process_ships_orders_as_they_arrive(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> None:
    processor = Processor(memory_store, shipper, clock, concurrency=2)
    await processor.start()
    service = OrderService(memory_store, processor, clock, auto_process=True)
    try:
        orders = [await service.submit("Ada", make_order().items) for _ in range(5)]
        for _ in range(1000):
            if len(shipper.shipped) == 5:
                break
            await asyncio.sleep(0)
        assert set(shipper.shipped) == {o.id for o in orders}
    finally:
        await processor.stop(grace_s=0)


async def test_large_trigger_is_claimed_in_batches(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> None:
    service = await _service(memory_store, shipper, clock, claim_batch=7, concurrency=3)
    try:
        for _ in range(30):
            await service.submit("Ada", make_order().items)
        assert await service.trigger_processing() == 30
        await wait_until_settled(memory_store)
        assert len(shipper.shipped) == 30
    finally:
        await service.processor.stop(grace_s=0)


async def test_simulated_shipper_waits_and_can_fail() -> None:
    order = make_order()
    await SimulatedShipper(delay_s=0, jitter_s=0.001).ship(order)
    with pytest.raises(ShippingError):
        await SimulatedShipper(delay_s=0, failure_rate=1.0).ship(order)
    with pytest.raises(ValueError, match="delay"):
        SimulatedShipper(delay_s=-1)


@pytest.mark.parametrize(
    "options",
    [{"concurrency": 0}, {"timeout_s": 0}, {"retry_backoff_s": -1}, {"lease_s": 1.0}],
)
def test_processor_refuses_bad_options(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        Processor(InMemoryOrderStore(), FakeShipper(), ManualClock(), **options)  # type: ignore[arg-type]


class _FlakyStore(InMemoryOrderStore):
    """Fails the first ship write with an error that is not ours."""

    failed = False

    async def transition(self, order_id, event, at, reason=None, *, owner=None):  # type: ignore[no-untyped-def]
        if event is Event.SHIP and not self.failed:
            self.failed = True
            raise RuntimeError("disk on fire")
        return await super().transition(order_id, event, at, reason, owner=owner)


async def test_unexpected_error_costs_the_attempt_not_the_worker(
    shipper: FakeShipper, clock: ManualClock
) -> None:
    """Regression: an unexpected exception (a warning turned error) killed the worker task and
    left its order stuck in processing."""
    store = _FlakyStore()
    service = await _service(store, shipper, clock, concurrency=1)
    try:
        order = await service.submit("Ada", make_order().items)
        await service.trigger_processing()
        await wait_until_settled(store)
        back = await store.get_order(order.id)
        assert back.status is OrderStatus.PENDING
        assert back.history[-1].reason == "internal error: shipment abandoned"
        await service.trigger_processing()
        await wait_until_settled(store)
        assert (await store.get_order(order.id)).status is OrderStatus.SHIPPED
    finally:
        await service.processor.stop(grace_s=0)


class _OutageStore(InMemoryOrderStore):
    """Unreachable for the first two outcome writes."""

    outages = 2

    async def transition(self, order_id, event, at, reason=None, *, owner=None):  # type: ignore[no-untyped-def]
        if owner is not None and self.outages:
            self.outages -= 1
            raise StoreUnavailable("database restarting")
        return await super().transition(order_id, event, at, reason, owner=owner)


async def test_an_outcome_waits_out_a_store_outage(
    shipper: FakeShipper, clock: ManualClock
) -> None:
    store = _OutageStore()
    service = await _service(store, shipper, clock, concurrency=1)
    try:
        order = await service.submit("Ada", make_order().items)
        await service.trigger_processing()
        await wait_until_settled(store)
        assert (await store.get_order(order.id)).status is OrderStatus.SHIPPED
        assert store.outages == 0
    finally:
        await service.processor.stop(grace_s=0)


class _SharedMemoryStore(InMemoryOrderStore):
    """The in-memory store, treated as if other processes shared it."""

    shared = True


async def test_with_a_shared_store_outcomes_are_written_in_batches_and_handed_back(
    held_shipper: FakeShipper, clock: ManualClock
) -> None:
    store = _SharedMemoryStore()
    service = await _service(store, held_shipper, clock, concurrency=2)
    orders = [await service.submit("Ada", make_order().items) for _ in range(6)]
    await service.trigger_processing()
    await held_shipper.started_event(orders[0].id).wait()
    await held_shipper.started_event(orders[1].id).wait()
    held_shipper.release(orders[0].id)
    for _ in range(200):
        if (await store.get_order(orders[0].id)).status is OrderStatus.SHIPPED:
            break
        await asyncio.sleep(0.001)
    assert (await store.get_order(orders[0].id)).status is OrderStatus.SHIPPED
    await service.processor.stop(grace_s=0)
    # everything unfinished is ready again for the other processes, not pending
    for order in orders[1:]:
        back = await store.get_order(order.id)
        assert back.status is OrderStatus.PROCESSING
    assert len(await store.acquire("another", 10)) == 5


async def test_a_cancel_told_twice_cancels_the_shipment_once(
    held_service: OrderService, held_shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """Regression: a shared store also notifies the canceller's own process; the second
    abort cancelled the worker task again and the worker left the pool."""
    order = await held_service.submit("Ada", make_order().items)
    await held_service.trigger_processing()
    await held_shipper.started_event(order.id).wait()
    await held_service.cancel_order(order.id)
    assert held_service.processor.abort(order.id)  # the notification arrives too
    for _ in range(100):
        if held_service.processor.in_flight == 0:
            break
        await asyncio.sleep(0)
    nxt = await held_service.submit("Bob", make_order().items)
    held_shipper.release(nxt.id)
    await held_service.trigger_processing()
    await wait_until_settled(memory_store)
    assert (await memory_store.get_order(nxt.id)).status is OrderStatus.SHIPPED
    assert all(not task.done() for task in held_service.processor._workers)


async def test_a_retry_note_waits_out_a_store_outage(
    shipper: FakeShipper, clock: ManualClock
) -> None:
    """Regression: a retry whose history entry met an outage was dropped without a word to the
    store, and the order stayed held by a live processor, processing for good."""
    store = _OutageStore()
    service = await _service(store, shipper, clock, max_attempts=2, retry_backoff_s=0)
    try:
        order = await service.submit("Ada", make_order().items)
        shipper.fail_next(order.id, ShippingError("busy"))
        await service.trigger_processing()
        await wait_until_settled(store)
        done = await store.get_order(order.id)
        assert done.status is OrderStatus.SHIPPED
        assert [h.status for h in done.history].count(OrderStatus.PROCESSING) == 2
        assert store.outages == 0
    finally:
        await service.processor.stop(grace_s=0)


class _BrokenOnceStore(InMemoryOrderStore):
    """Each background call fails once with an error that is not ours (a driver's, a bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"acquire": 0, "heartbeat": 0}

    def _once(self, name: str) -> None:
        self.calls[name] += 1
        if self.calls[name] == 2:
            raise RuntimeError(f"{name} broke")

    async def acquire(self, owner: str, limit: int) -> list[Order]:
        self._once("acquire")
        return await super().acquire(owner, limit)

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        self._once("heartbeat")


async def test_the_fetcher_and_the_heartbeat_outlive_errors_that_are_not_ours(
    shipper: FakeShipper, clock: ManualClock
) -> None:
    """Regression: a driver error that was not translated ended the fetcher and the heartbeat
    tasks; the process served on but never shipped, nor renewed a lease, again."""
    store = _BrokenOnceStore()
    options = {"poll_interval_s": 0.005, "heartbeat_s": 0.005, "lease_s": 1.0}
    service = await _service(store, shipper, clock, **options)
    try:
        orders = [await service.submit("Ada", make_order().items) for _ in range(3)]
        for order in orders:
            await service.trigger_processing()
            await wait_until_settled(store)
            assert (await store.get_order(order.id)).status is OrderStatus.SHIPPED
        for _ in range(1000):
            if store.calls["heartbeat"] > 3:
                break
            await asyncio.sleep(0.001)
        assert store.calls["heartbeat"] > 3
        assert store.calls["acquire"] > 2
    finally:
        await service.processor.stop(grace_s=0)
