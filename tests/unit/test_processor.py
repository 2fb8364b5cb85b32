"""The processor: every exit of a shipment (success, failure, retry, timeout, cancel, shutdown
mid-flight), what a shipper is told, and what the processor holds (fencing, heartbeats)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest

from orderflow.domain import (
    Event,
    EventType,
    Held,
    Hold,
    Order,
    OrderStatus,
    Outcome,
    Parcel,
    lost_track,
)
from orderflow.errors import ShuttingDown, StoreUnavailable
from orderflow.processor import ProcessorSettings
from orderflow.shipping import (
    PermanentFailure,
    RetryableFailure,
    ShipContext,
    SimulatedShipper,
)
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import BASE_TIME, FakeShipper, ManualClock, eventually, make_order, settled
from tests.helpers import submit_many
from tests.unit.conftest import SharedMemoryStore, StartService


def status_is(
    store: InMemoryOrderStore, order_id: str, status: OrderStatus
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await store.get_order(order_id)).status is status

    return check


async def events_of(store: InMemoryOrderStore, order_id: str) -> list[EventType]:
    return [e.type for e in await store.read_events(0, 100_000) if e.order_id == order_id]


# -- triggers -------------------------------------------------------------------------------------


async def test_trigger_ships_every_pending_order_once(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """A trigger ships every pending order exactly once, and the processor holds nothing after."""
    service = await start_service(concurrency=4)
    ids = await submit_many(service, 20)
    assert await service.trigger_processing() == 20
    await settled(memory_store)
    for order_id in ids:
        shipped = await memory_store.get_order(order_id)
        assert shipped.status is OrderStatus.SHIPPED
        assert [h.status for h in shipped.history] == ["pending", "processing", "shipped"]
    assert shipper.shipped == dict.fromkeys(ids, 1)
    assert list(memory_store.check_invariants()) == []
    assert service.processor.holdings == {}


async def test_orders_submitted_after_a_trigger_wait_for_the_next(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """An order submitted after a trigger stays pending until the next trigger."""
    service = await start_service()
    await submit_many(service, 1)
    assert await service.trigger_processing() == 1
    [late] = await submit_many(service, 1)
    await settled(memory_store)
    assert (await memory_store.get_order(late)).status is OrderStatus.PENDING
    assert await service.trigger_processing() == 1


async def test_simultaneous_triggers_claim_each_order_once(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """Ten triggers at once claim each order once between them; each ships once."""
    service = await start_service(claim_batch=7)
    await submit_many(service, 50)
    counts = await asyncio.gather(*(service.trigger_processing() for _ in range(10)))
    assert sum(counts) == 50
    await settled(memory_store)
    assert sorted(shipper.shipped.values()) == [1] * 50


class _CountingClaims(InMemoryOrderStore):
    """Records each claim: (limit, how many it claimed, the ticks of a task running beside)."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[tuple[int, int, int]] = []
        self.ticks = 0

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        claimed = await super().claim_pending(at, limit, created_before)
        self.claims.append((limit, claimed, self.ticks))
        return claimed


async def test_a_large_trigger_is_claimed_in_batches_with_other_tasks_run_in_between(
    start_service: StartService, shipper: FakeShipper
) -> None:
    """Regression: the batching test only checked that everything shipped, which it did with
    no batching at all (one claim of every pending order, blocking the loop throughout)."""
    store = _CountingClaims()
    service = await start_service(store=store, claim_batch=7, concurrency=3)
    await submit_many(service, 30)
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            store.ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        assert await service.trigger_processing() == 30
    finally:
        stop.set()
        await ticker
    assert [limit for limit, _, _ in store.claims] == [7] * 5
    assert [claimed for _, claimed, _ in store.claims] == [7, 7, 7, 7, 2]
    ticks = [ticks for _, _, ticks in store.claims]
    assert all(later > earlier for earlier, later in itertools.pairwise(ticks)), ticks
    await settled(store)
    assert len(shipper.shipped) == 30


async def test_cancel_of_a_ready_order_is_skipped_by_acquire(
    memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    """A claimed order cancelled before any processor acquired it is never handed out."""
    order = make_order(clock)
    await memory_store.add(order)
    await memory_store.claim_pending(clock.now(), 10)
    await memory_store.transition(order.id, Event.CANCEL, clock.now())
    assert await memory_store.acquire("me", 10, 15.0) == []


# -- every exit of a shipment ---------------------------------------------------------------------


async def test_a_shipment_result_is_stored_on_the_order_and_in_its_event(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """The shipper's result is stored as the order's `shipment` and carried by its shipped event."""
    service = await start_service()
    [order_id] = await submit_many(service, 1)
    shipper.results[order_id] = {"carrier": "ACME", "tracking": "T-1"}
    await service.trigger_processing()
    await settled(memory_store)
    shipped = await memory_store.get_order(order_id)
    assert shipped.status is OrderStatus.SHIPPED
    assert shipped.shipment == {"carrier": "ACME", "tracking": "T-1"}
    last = [e for e in await memory_store.read_events(0, 100) if e.order_id == order_id][-1]
    assert last.type is EventType.SHIPPED
    assert last.data == {"carrier": "ACME", "tracking": "T-1"}


async def test_a_shipper_returning_none_ships_with_no_result(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """A shipper that returns None ships the order with no shipment result."""
    service = await start_service()
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await settled(memory_store)
    shipped = await memory_store.get_order(order_id)
    assert shipped.status is OrderStatus.SHIPPED
    assert shipped.shipment is None


async def test_a_permanent_failure_fails_at_once_despite_attempts_left(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """PermanentFailure fails the order on the first attempt, with no reattempt, whatever
    max_attempts."""
    service = await start_service(max_attempts=3, retry_backoff_s=0)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, PermanentFailure("address refused"))
    await service.trigger_processing()
    await settled(memory_store)
    failed = await memory_store.get_order(order_id)
    assert failed.status is OrderStatus.FAILED
    assert [h.status for h in failed.history] == ["pending", "processing", "failed"]
    assert failed.history[-1].reason == "address refused"
    assert [c.attempt for c in shipper.contexts[order_id]] == [1]
    assert EventType.ATTEMPT_FAILED not in await events_of(memory_store, order_id)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("carrier on strike"), "carrier on strike"),
        (RetryableFailure("busy"), "busy"),
        (RuntimeError(), "RuntimeError"),
        (PermanentFailure(), "PermanentFailure"),
    ],
)
async def test_a_failed_last_attempt_fails_the_order_with_the_error_as_reason(
    start_service: StartService,
    shipper: FakeShipper,
    memory_store: InMemoryOrderStore,
    error: Exception,
    reason: str,
) -> None:
    """The last attempt's error fails the order with its message (or its type's name) as reason."""
    service = await start_service(max_attempts=1)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, error)
    await service.trigger_processing()
    await settled(memory_store)
    failed = await memory_store.get_order(order_id)
    assert failed.status is OrderStatus.FAILED
    assert failed.history[-1].reason == reason


async def test_retryable_errors_are_retried_up_to_max_attempts_each_noted(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """Retryable errors are retried up to max_attempts, each failed attempt noted (REATTEMPT) before
    the order fails."""
    service = await start_service(max_attempts=3, retry_backoff_s=0)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, RetryableFailure("busy"), RuntimeError("down"), TimeoutError())
    await service.trigger_processing()
    await settled(memory_store)
    failed = await memory_store.get_order(order_id)
    assert failed.status is OrderStatus.FAILED
    assert [h.status for h in failed.history] == [
        "pending",
        "processing",
        "processing",
        "processing",
        "failed",
    ]
    assert [h.reason for h in failed.history[2:]] == [
        "attempt 1 of 3 failed (busy); retrying in 0.00s",
        "attempt 2 of 3 failed (down); retrying in 0.00s",
        "TimeoutError",
    ]
    assert [c.attempt for c in shipper.contexts[order_id]] == [1, 2, 3]
    assert shipper.shipped[order_id] == 0
    assert (await events_of(memory_store, order_id)).count(EventType.ATTEMPT_FAILED) == 2


async def test_retries_record_each_attempt_then_ship(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """Failed attempts are noted in the history, then a later attempt ships the order once."""
    service = await start_service(max_attempts=3, retry_backoff_s=0)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, RuntimeError("busy"), RuntimeError("busy"))
    await service.trigger_processing()
    await settled(memory_store)
    done = await memory_store.get_order(order_id)
    assert [h.status for h in done.history] == [
        "pending",
        "processing",
        "processing",
        "processing",
        "shipped",
    ]
    assert done.history[2].reason is not None
    assert "attempt 1 of 3 failed (busy)" in done.history[2].reason
    assert shipper.shipped[order_id] == 1
    assert service.processor.holdings == {}


class _TimedShipper(FakeShipper):
    """A FakeShipper that notes when (monotonic seconds) each attempt began."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def ship(self, order: Order, context: ShipContext) -> dict[str, Any] | None:
        self.times.append(time.monotonic())
        return await super().ship(order, context)


async def test_a_retry_after_delays_the_next_attempt_at_least_that_long(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """RetryableFailure(retry_after_s) delays the next attempt at least that long, and the note says
    so."""
    shipper = _TimedShipper()
    service = await start_service(shipper_=shipper, max_attempts=2, retry_backoff_s=0)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, RetryableFailure("HTTP 429", retry_after_s=0.2))
    await service.trigger_processing()
    await settled(memory_store)
    done = await memory_store.get_order(order_id)
    assert done.status is OrderStatus.SHIPPED
    assert done.history[2].reason == "attempt 1 of 2 failed (HTTP 429); retrying in 0.20s"
    first, second = shipper.times
    assert second - first >= 0.19  # the loop may wake a clock tick early, never more


async def test_a_retry_after_is_honoured_at_most_max_retry_after(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """A Retry-After longer than max_retry_after_s is cut to it."""
    service = await start_service(max_attempts=2, retry_backoff_s=0, max_retry_after_s=0.01)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, RetryableFailure("HTTP 503", retry_after_s=3600))
    await service.trigger_processing()
    await settled(memory_store)
    done = await memory_store.get_order(order_id)
    assert done.status is OrderStatus.SHIPPED
    assert done.history[2].reason == "attempt 1 of 2 failed (HTTP 503); retrying in 0.01s"


async def test_a_slow_shipment_times_out_and_fails(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """An attempt past timeout_s is cancelled and fails the order with reason "timeout"."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, timeout_s=0.01)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await eventually(status_is(memory_store, order_id, OrderStatus.FAILED))
    failed = await memory_store.get_order(order_id)
    assert failed.history[-1].reason == "timeout"
    assert order_id in shipper.cancelled  # the shipment itself was cancelled
    assert shipper.shipped[order_id] == 0


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TimeoutError("carrier read timed out"), "carrier read timed out"),
        (TimeoutError(), "TimeoutError"),
    ],
)
async def test_a_shippers_own_timeout_error_is_not_mistaken_for_the_deadline(
    start_service: StartService,
    shipper: FakeShipper,
    memory_store: InMemoryOrderStore,
    error: TimeoutError,
    reason: str,
) -> None:
    """A TimeoutError the shipper raises itself keeps its own reason; only our deadline says
    "timeout"."""
    service = await start_service(timeout_s=30)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, error)
    await service.trigger_processing()
    await settled(memory_store)
    failed = await memory_store.get_order(order_id)
    assert failed.status is OrderStatus.FAILED
    assert failed.history[-1].reason == reason


async def test_the_shipper_is_told_the_attempt_the_deadline_and_a_logger_with_the_order(
    start_service: StartService,
    shipper: FakeShipper,
    memory_store: InMemoryOrderStore,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ShipContext: attempts 1, 2, 3; an aware UTC deadline timeout_s after a clock reading; a
    logger whose lines carry the order id."""
    service = await start_service(max_attempts=3, retry_backoff_s=0, timeout_s=7)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, RuntimeError("one"), RuntimeError("two"))
    await service.trigger_processing()
    await settled(memory_store)
    contexts = shipper.contexts[order_id]
    assert [c.attempt for c in contexts] == [1, 2, 3]
    timeout = timedelta(seconds=7)
    for context in contexts:
        assert context.deadline.utcoffset() == timedelta(0)  # aware, in UTC
        assert BASE_TIME < context.deadline - timeout <= clock.current
    deadlines = [c.deadline for c in contexts]
    assert deadlines == sorted(set(deadlines))  # each attempt has its own, later deadline
    with caplog.at_level(logging.INFO):
        contexts[0].log.info("label printed")
    [record] = [r for r in caplog.records if r.getMessage() == "label printed"]
    assert record.order_id == order_id  # type: ignore[attr-defined]


async def test_cancel_during_shipment_cancels_the_task_and_never_ships(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """A user cancel during a shipment cancels it; the order is never shipped and the worker lives
    on."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=1)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.started_event(order_id).wait()
    cancelled = await service.cancel_order(order_id)
    assert cancelled.status is OrderStatus.CANCELLED
    await eventually(lambda: service.processor.in_flight == 0)
    assert order_id in shipper.cancelled
    shipper.release(order_id)
    final = await memory_store.get_order(order_id)
    assert final.status is OrderStatus.CANCELLED
    assert shipper.shipped[order_id] == 0
    assert service.processor.holdings == {}
    # The only worker survived its cancelled shipment and ships the next order.
    [other] = await submit_many(service, 1)
    shipper.release(other)
    await service.trigger_processing()
    await settled(memory_store)
    assert (await memory_store.get_order(other)).status is OrderStatus.SHIPPED


async def test_cancel_while_queued_drops_the_order_before_shipping(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """A user cancel of an order queued here drops it before any worker starts it."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=1)
    first, second = await submit_many(service, 2)
    await service.trigger_processing()
    await shipper.started_event(first).wait()
    await eventually(lambda: service.processor.queued == 1)  # held for the busy worker
    await service.cancel_order(second)
    assert second not in service.processor.holdings
    shipper.release(first)
    await settled(memory_store)
    assert shipper.shipped == {first: 1}
    assert second not in shipper.started
    assert (await memory_store.get_order(second)).status is OrderStatus.CANCELLED


async def test_cancel_during_the_wait_before_a_retry_never_ships(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """A user cancel while the processor waits to retry stops the shipment: no second attempt."""
    shipper = FakeShipper()
    service = await start_service(shipper_=shipper, max_attempts=2, retry_backoff_s=30)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, RuntimeError("busy"))
    await service.trigger_processing()

    async def waiting_to_retry() -> bool:
        history = (await memory_store.get_order(order_id)).history
        return len(history) == 3  # the note of the failed attempt is written: now it waits

    await eventually(waiting_to_retry)
    assert service.processor.in_flight == 1
    await service.cancel_order(order_id)
    await eventually(lambda: service.processor.in_flight == 0)
    assert len(shipper.contexts[order_id]) == 1
    assert shipper.shipped[order_id] == 0
    assert (await memory_store.get_order(order_id)).status is OrderStatus.CANCELLED
    assert service.processor.holdings == {}


async def test_a_cancel_told_twice_cancels_the_shipment_once(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """Regression: a shared store also notifies the canceller's own process; the second
    abort cancelled the worker task again and the worker left the pool."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=2)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.started_event(order_id).wait()
    await service.cancel_order(order_id)
    assert service.processor.abort(order_id)  # the notification arrives too
    await eventually(lambda: service.processor.in_flight == 0)
    assert not service.processor.abort(order_id)  # nothing left of it here
    # Both workers are still there: two shipments run at once.
    both = await submit_many(service, 2)
    await service.trigger_processing()
    for other in both:
        await shipper.started_event(other).wait()
    assert service.processor.in_flight == 2
    for other in both:
        shipper.release(other)
    await settled(memory_store)
    assert all(shipper.shipped[other] == 1 for other in both)


# -- an order the shipper says was taken ---------------------------------------------------------


class TakingShipper:
    """Says every order is taken (`context.mark_taken()`) as soon as it is called, then holds
    the shipment until `release()` and returns `result`, or raises `error`; counts its calls and
    notes the shipments cancelled."""

    def __init__(
        self, *, result: dict[str, Any] | None = None, error: Exception | None = None
    ) -> None:
        self.result, self.error = result, error
        self.calls: Counter[str] = Counter()
        self.taken = asyncio.Event()
        self.cancelled: set[str] = set()
        self._gate = asyncio.Event()

    def release(self) -> None:
        self._gate.set()

    async def ship(self, order: Order, context: ShipContext) -> dict[str, Any] | None:
        self.calls[order.id] += 1
        context.mark_taken()
        context.mark_taken()  # a second call changes nothing
        self.taken.set()
        try:
            if self.error is None:
                await self._gate.wait()
        except asyncio.CancelledError:
            self.cancelled.add(order.id)
            raise
        if self.error is not None:
            raise self.error
        return self.result

    async def close(self) -> None:
        return None


def statuses_of(order: Order) -> list[OrderStatus]:
    return [entry.status for entry in order.history]


async def test_a_taken_order_ships_with_its_result_after_the_deadline(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """Regression: the attempt's deadline cancelled a shipment the receiver had taken already
    (a 2xx whose body was slow); the order was shipped again by the next attempt, then failed."""
    shipper = TakingShipper(result={"tracking": "T1"})
    service = await start_service(shipper_=shipper, timeout_s=0.05, max_attempts=2)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.taken.wait()
    await asyncio.sleep(0.3)  # well past the deadline
    shipper.release()
    await eventually(status_is(memory_store, order_id, OrderStatus.SHIPPED))
    shipped = await memory_store.get_order(order_id)
    assert shipped.shipment == {"tracking": "T1"}
    assert statuses_of(shipped) == [
        OrderStatus.PENDING,
        OrderStatus.PROCESSING,
        OrderStatus.SHIPPED,
    ]
    assert shipper.calls[order_id] == 1
    assert not shipper.cancelled


async def test_a_taken_order_whose_result_does_not_come_ships_without_one(
    start_service: StartService,
    memory_store: InMemoryOrderStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once taken, the shipper has result_wait_s for its result (or till its deadline, if later);
    a second later it is cut off, and the order ships with no result and one warning line saying
    why."""
    shipper = TakingShipper(result={"tracking": "T1"})
    service = await start_service(
        shipper_=shipper, timeout_s=0.05, result_wait_s=0.2, max_attempts=3
    )
    [order_id] = await submit_many(service, 1)
    with caplog.at_level(logging.WARNING, logger="orderflow.processor"):
        await service.trigger_processing()
        await eventually(status_is(memory_store, order_id, OrderStatus.SHIPPED))
    shipped = await memory_store.get_order(order_id)
    assert shipped.shipment is None
    assert statuses_of(shipped)[-2:] == [OrderStatus.PROCESSING, OrderStatus.SHIPPED]
    assert (shipper.calls[order_id], shipper.cancelled) == (1, {order_id})
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "the order was taken, then its shipment failed (cut off waiting for its result):"
        " shipped, no result stored"
    )


@pytest.mark.parametrize(
    "error", [RuntimeError("carrier API down"), PermanentFailure("refused"), TimeoutError("slow")]
)
async def test_a_failure_after_the_take_ships_without_a_result(
    start_service: StartService,
    memory_store: InMemoryOrderStore,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    """A retry would ship it twice; failing it would lose a shipment that happened."""
    shipper = TakingShipper(error=error)
    service = await start_service(shipper_=shipper, max_attempts=3)
    [order_id] = await submit_many(service, 1)
    with caplog.at_level(logging.WARNING, logger="orderflow.processor"):
        await service.trigger_processing()
        await eventually(status_is(memory_store, order_id, OrderStatus.SHIPPED))
    assert (await memory_store.get_order(order_id)).shipment is None
    assert shipper.calls[order_id] == 1
    assert f"then its shipment failed ({error}): shipped, no result stored" in caplog.text


class LastMomentShipper:
    """Says the order is taken in the very loop turn its deadline fires, after it fired: the
    loop is blocked past the deadline, and the take is a timer due just after it."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.calls = 0

    async def ship(self, order: Order, context: ShipContext) -> dict[str, Any] | None:
        self.calls += 1
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()

        def take() -> None:
            context.mark_taken()
            if not answered.done():  # the deadline cancelled the wait just before
                answered.set_result(None)

        loop.call_at(loop.time() + self.timeout_s + 0.01, take)
        time.sleep(self.timeout_s + 0.1)  # noqa: ASYNC251  (both timers are due at once)
        await answered
        return {"tracking": "T1"}

    async def close(self) -> None:
        return None


async def test_an_order_taken_in_the_loop_turn_its_deadline_fired_ships(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """The deadline's cancel is on its way when the take comes: the attempt still ships (with
    no result: the shipment was cut off), and is not retried."""
    shipper = LastMomentShipper(timeout_s=0.05)
    service = await start_service(shipper_=shipper, timeout_s=0.05, max_attempts=2)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await eventually(status_is(memory_store, order_id, OrderStatus.SHIPPED))
    shipped = await memory_store.get_order(order_id)
    assert (shipped.shipment, shipper.calls) == (None, 1)


async def test_a_user_cancel_after_the_take_still_cancels_the_call(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    shipper = TakingShipper()
    service = await start_service(shipper_=shipper)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.taken.wait()
    await service.cancel_order(order_id)
    await eventually(lambda: service.processor.in_flight == 0)
    assert shipper.cancelled == {order_id}
    assert (await memory_store.get_order(order_id)).status is OrderStatus.CANCELLED
    assert service.processor.holdings == {}


@pytest.mark.parametrize("shared", [False, True], ids=["one-process", "shared"])
async def test_shutdown_cutting_off_a_taken_shipment_records_it_shipped(
    start_service: StartService, caplog: pytest.LogCaptureFixture, shared: bool
) -> None:
    """Handed back (or released), an order the receiver took would be shipped again by the next
    holder; one not taken still goes back (test_shutdown_releases_shipments_in_flight_…)."""
    store = SharedMemoryStore() if shared else InMemoryOrderStore()
    shipper = TakingShipper()
    service = await start_service(store=store, shipper_=shipper)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.taken.wait()
    with caplog.at_level(logging.WARNING, logger="orderflow.processor"):
        await service.stop(grace_s=0)
    shipped = await store.get_order(order_id)
    assert (shipped.status, shipped.shipment) == (OrderStatus.SHIPPED, None)
    assert shipper.cancelled == {order_id}
    assert (
        f"order_id={order_id} cut off by shutdown after it was taken: shipped, no result stored"
        in caplog.text
    )
    assert service.processor.holdings == {}


# -- shutdown -------------------------------------------------------------------------------------


async def test_shutdown_releases_shipments_in_flight_with_the_reason(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """A stop with no grace cuts off shipments in flight: back to pending, reason "shutdown:
    shipment interrupted"."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=8)
    ids = await submit_many(service, 3)
    await service.trigger_processing()
    for order_id in ids:
        await shipper.started_event(order_id).wait()
    await service.stop(grace_s=0)
    for order_id in ids:
        back = await memory_store.get_order(order_id)
        assert back.status is OrderStatus.PENDING
        assert back.history[-1].reason == "shutdown: shipment interrupted"
    assert shipper.cancelled == set(ids)
    assert sum(shipper.shipped.values()) == 0
    assert service.processor.holdings == {}
    assert service.processor.in_flight == 0
    with pytest.raises(ShuttingDown):
        await service.trigger_processing()


class _SignalsStop(InMemoryOrderStore):
    """Sets `stopping` when a stopping processor puts back what it did not start: from then
    on, the stop only waits for the shipments in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = asyncio.Event()

    async def release_unshared(self, at: datetime, reason: str) -> int:
        self.stopping.set()
        return await super().release_unshared(at, reason)


async def test_shutdown_lets_shipments_finish_within_the_grace(
    start_service: StartService,
) -> None:
    """A shipment that ends within the grace is written as shipped, not cut off."""
    store = _SignalsStop()
    shipper = FakeShipper(hold=True)
    service = await start_service(store=store, shipper_=shipper)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.started_event(order_id).wait()
    stopping = asyncio.create_task(service.stop(grace_s=30))
    await store.stopping.wait()
    assert not stopping.done()
    shipper.release(order_id)
    await stopping
    assert (await store.get_order(order_id)).status is OrderStatus.SHIPPED
    assert order_id not in shipper.cancelled
    assert service.processor.holdings == {}


async def test_shutdown_cuts_off_only_what_is_still_shipping_when_the_grace_is_over(
    start_service: StartService,
) -> None:
    """When the grace is over, only what still ships is cut off (and released); what finished in
    time is shipped."""
    store = _SignalsStop()
    shipper = FakeShipper(hold=True)
    service = await start_service(store=store, shipper_=shipper, concurrency=2)
    quick, slow = await submit_many(service, 2)
    await service.trigger_processing()
    await shipper.started_event(quick).wait()
    await shipper.started_event(slow).wait()
    stopping = asyncio.create_task(service.stop(grace_s=0.5))
    await store.stopping.wait()
    shipper.release(quick)  # finishes within the grace
    await stopping
    assert (await store.get_order(quick)).status is OrderStatus.SHIPPED
    cut = await store.get_order(slow)
    assert cut.status is OrderStatus.PENDING
    assert cut.history[-1].reason == "shutdown: shipment interrupted"
    assert shipper.cancelled == {slow}
    assert service.processor.holdings == {}


async def test_shutdown_hands_back_queued_orders_and_puts_ready_ones_back(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """A stop puts queued and ready orders back to pending ("shutdown: not started") and the one in
    flight with its reason."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=1)
    ids = await submit_many(service, 5)
    await service.trigger_processing()  # one ships, one is queued, three stay ready
    await shipper.started_event(ids[0]).wait()
    await eventually(lambda: service.processor.queued == 1)
    await service.stop(grace_s=0)
    reasons = [(await memory_store.get_order(i)).history[-1].reason for i in ids]
    assert reasons == ["shutdown: shipment interrupted"] + ["shutdown: not started"] * 4
    assert (await memory_store.count_by_status())[OrderStatus.PENDING] == 5
    assert list(memory_store.check_invariants()) == []
    assert service.processor.queued == 0
    assert service.processor.holdings == {}


async def test_with_a_shared_store_outcomes_are_batched_and_the_rest_handed_back(
    start_service: StartService,
) -> None:
    """With a shared store, a stop hands unfinished orders back (ready for other processes), not to
    pending."""
    store = SharedMemoryStore()
    shipper = FakeShipper(hold=True)
    service = await start_service(store=store, shipper_=shipper, concurrency=2)
    ids = await submit_many(service, 6)
    await service.trigger_processing()
    await shipper.started_event(ids[0]).wait()
    await shipper.started_event(ids[1]).wait()
    shipper.release(ids[0])
    await eventually(status_is(store, ids[0], OrderStatus.SHIPPED))
    await service.stop(grace_s=0)
    # Everything unfinished is ready again for the other processes, not pending.
    for order_id in ids[1:]:
        back = await store.get_order(order_id)
        assert back.status is OrderStatus.PROCESSING
    assert len(await store.acquire("another", 10, 15.0)) == 5
    assert list(store.check_invariants()) == []


# -- holdings and fencing -------------------------------------------------------------------------


class _RecordingOutcomes(InMemoryOrderStore):
    """Records every outcome written: (order id, token, event, written or refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[tuple[str, int, Event, bool]] = []

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
        written = await super().write_outcomes(owner, outcomes)
        self.outcomes += [
            (o.order_id, o.token, o.event, w is not None)
            for o, w in zip(outcomes, written, strict=True)
        ]
        return written


async def test_an_order_acquired_again_while_it_ships_here_ships_once_under_the_new_token(
    start_service: StartService, clock: ManualClock
) -> None:
    """The lease of an order ran out while it shipped here (an outage), and this very processor
    acquired it again: the shipment under way carries on and writes under the new token."""
    store = _RecordingOutcomes()
    shipper = FakeShipper(hold=True)
    service = await start_service(store=store, shipper_=shipper, heartbeat_s=30, lease_s=90)
    processor = service.processor
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.started_event(order_id).wait()
    first = processor.holdings[order_id]
    assert await store.retire(processor.owner, clock.now()) == 1  # behind its back
    processor.wake()
    await eventually(lambda: processor.holdings.get(order_id, first) != first)
    second = processor.holdings[order_id]
    assert second > first
    assert processor.queued == 0  # known: not queued a second time
    assert processor.in_flight == 1
    shipper.release(order_id)
    await settled(store)
    assert (await store.get_order(order_id)).status is OrderStatus.SHIPPED
    assert shipper.shipped[order_id] == 1
    assert len(shipper.contexts[order_id]) == 1
    assert store.outcomes == [(order_id, second, Event.SHIP, True)]
    assert processor.holdings == {}
    assert await events_of(store, order_id) == [
        EventType.SUBMITTED,
        EventType.PROCESSING,
        EventType.RELEASED,
        EventType.SHIPPED,
    ]


async def test_a_stale_queued_copy_of_an_order_acquired_again_is_dropped(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    """An order queued here was taken away (the heartbeat learns it and drops it) and acquired
    again before a worker reached its first copy: two copies then wait in the queue, and only
    one may ship."""
    shipper = FakeShipper(hold=True)
    service = await start_service(
        shipper_=shipper, concurrency=2, heartbeat_s=0.01, lease_s=0.03, poll_interval_s=30
    )
    processor, store = service.processor, memory_store
    one, two, three = await submit_many(service, 3)
    await service.trigger_processing()
    await shipper.started_event(one).wait()
    await shipper.started_event(two).wait()
    assert processor.queued == 1
    hold = Hold(processor.owner, processor.holdings[three])
    await store.transition(three, Event.HANDBACK, clock.now(), "taken away", hold=hold)
    await eventually(lambda: three not in processor.holdings)  # the heartbeat dropped it
    processor.wake()
    await eventually(lambda: three in processor.holdings)  # acquired again, queued again
    shipper.release(one)  # a worker takes the first copy
    await shipper.started_event(three).wait()
    shipper.release(two)  # the other worker comes to the second copy
    await eventually(status_is(store, two, OrderStatus.SHIPPED))
    await eventually(lambda: processor.queued == 0)
    starts = len(shipper.contexts[three])
    shipper.release(three)  # before asserting: a second shipment would hold up the stop
    await settled(store)
    assert starts == 1, "the order started shipping twice at once"
    assert shipper.shipped == {one: 1, two: 1, three: 1}
    assert (await store.get_order(three)).status is OrderStatus.SHIPPED


class _LosesAcquireAnswers(InMemoryOrderStore):
    """The first acquire that hands out orders is made, but its answer is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[str] = []

    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        held = await super().acquire(owner, limit, lease_s)
        if held and not self.lost:
            self.lost = [h.order.id for h in held]
            raise StoreUnavailable("connection reset by peer")
        return held


async def test_orders_acquired_by_a_lost_answer_are_handed_back_by_the_heartbeat_and_ship(
    start_service: StartService, shipper: FakeShipper
) -> None:
    """Orders acquired by an acquire whose answer was lost are handed back by the next heartbeat,
    then ship once."""
    store = _LosesAcquireAnswers()
    service = await start_service(store=store, heartbeat_s=0.02, lease_s=0.06, poll_interval_s=0.02)
    ids = await submit_many(service, 3)
    await service.trigger_processing()
    await settled(store)
    assert sorted(store.lost) == ids  # they were held by the owner, unknown to it
    owner = service.processor.owner
    for order_id in ids:
        order = await store.get_order(order_id)
        assert order.status is OrderStatus.SHIPPED
        assert lost_track(owner) in [h.reason for h in order.history]
    assert shipper.shipped == dict.fromkeys(ids, 1)
    assert list(store.check_invariants()) == []


async def test_a_heartbeat_that_learns_an_order_was_taken_away_cancels_its_shipment(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    """A heartbeat that learns an order was taken away cancels its shipment here; the new holder
    ships it."""
    shipper = FakeShipper(hold=True)
    service = await start_service(
        shipper_=shipper, heartbeat_s=0.02, lease_s=0.06, poll_interval_s=30
    )
    processor, store = service.processor, memory_store
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await shipper.started_event(order_id).wait()
    await store.retire(processor.owner, clock.now())  # behind its back, and another takes it
    [taken] = await store.acquire("another", 10, 15.0)
    await eventually(lambda: order_id in shipper.cancelled)
    await eventually(lambda: processor.in_flight == 0)
    assert order_id not in processor.holdings
    assert shipper.shipped[order_id] == 0
    # The new holder is undisturbed: it ships the order.
    hold = Hold("another", taken.token)
    shipped = await store.transition(order_id, Event.SHIP, clock.now(), hold=hold)
    assert shipped.status is OrderStatus.SHIPPED


async def test_abort_of_a_queued_order_drops_it(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    """`abort` of an order queued here drops it (True once, then False; False for an order never
    held)."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=1)
    processor = service.processor
    first, second = await submit_many(service, 2)
    await service.trigger_processing()
    await shipper.started_event(first).wait()
    await eventually(lambda: processor.queued == 1)
    await memory_store.transition(second, Event.CANCEL, clock.now())  # the store says so first
    assert processor.abort(second)
    assert second not in processor.holdings
    assert not processor.abort(second)
    assert not processor.abort("order_" + "f" * 30)  # never held here
    shipper.release(first)
    await settled(memory_store)
    await eventually(lambda: processor.queued == 0)
    assert second not in shipper.started
    assert shipper.shipped == {first: 1}


# -- outages and bugs -----------------------------------------------------------------------------


class _FlakyStore(InMemoryOrderStore):
    """Fails the first ship write with an error that is not ours."""

    failed = False

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
        if any(o.event is Event.SHIP for o in outcomes) and not self.failed:
            self.failed = True
            raise RuntimeError("disk on fire")
        return await super().write_outcomes(owner, outcomes)


async def test_unexpected_error_costs_the_attempt_not_the_worker(
    start_service: StartService,
) -> None:
    """Regression: an unexpected exception (a warning turned error) killed the worker task and
    left its order stuck in processing."""
    store = _FlakyStore()
    service = await start_service(store=store, concurrency=1)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await settled(store)
    back = await store.get_order(order_id)
    assert back.status is OrderStatus.PENDING
    assert back.history[-1].reason == "internal error: abandoned"
    await service.trigger_processing()
    await settled(store)
    assert (await store.get_order(order_id)).status is OrderStatus.SHIPPED


class _OutageStore(InMemoryOrderStore):
    """Unreachable for the first two outcome writes."""

    outages = 2

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("database restarting")
        return await super().write_outcomes(owner, outcomes)


async def test_an_outcome_waits_out_a_store_outage(start_service: StartService) -> None:
    """An outcome write that meets StoreUnavailable is retried until the store is back."""
    store = _OutageStore()
    service = await start_service(store=store, concurrency=1)
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await settled(store)
    assert (await store.get_order(order_id)).status is OrderStatus.SHIPPED
    assert store.outages == 0


async def test_a_retry_note_waits_out_a_store_outage(
    start_service: StartService, shipper: FakeShipper
) -> None:
    """Regression: a retry whose history entry met an outage was dropped without a word to the
    store, and the order stayed held by a live processor, processing for good."""
    store = _OutageStore()
    service = await start_service(store=store, max_attempts=2, retry_backoff_s=0)
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, RuntimeError("busy"))
    await service.trigger_processing()
    await settled(store)
    done = await store.get_order(order_id)
    assert done.status is OrderStatus.SHIPPED
    assert [h.status for h in done.history].count(OrderStatus.PROCESSING) == 2
    assert store.outages == 0


class _BrokenOnceStore(InMemoryOrderStore):
    """Each background call fails once with an error that is not ours (a driver's, a bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"acquire": 0, "renew": 0}

    def _once(self, name: str) -> None:
        self.calls[name] += 1
        if self.calls[name] == 2:
            raise RuntimeError(f"{name} broke")

    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        self._once("acquire")
        return await super().acquire(owner, limit, lease_s)

    async def renew(
        self, owner: str, holds: Mapping[str, int], lease_s: float, at: datetime
    ) -> set[str]:
        self._once("renew")
        return await super().renew(owner, holds, lease_s, at)


async def test_the_fetcher_and_the_heartbeat_outlive_errors_that_are_not_ours(
    start_service: StartService,
) -> None:
    """Regression: a driver error that was not translated ended the fetcher and the heartbeat
    tasks; the process served on but never shipped, nor renewed a lease, again."""
    store = _BrokenOnceStore()
    service = await start_service(
        store=store, poll_interval_s=0.005, heartbeat_s=0.005, lease_s=1.0
    )
    for _ in range(3):
        [order_id] = await submit_many(service, 1)
        await service.trigger_processing()
        await settled(store)
        assert (await store.get_order(order_id)).status is OrderStatus.SHIPPED
    await eventually(lambda: store.calls["renew"] > 3)
    assert store.calls["acquire"] > 2


# -- settings and the simulated shipper -----------------------------------------------------------


async def test_the_simulated_shipper_waits_and_can_fail() -> None:
    """SimulatedShipper ships after its delay, fails retryably at failure_rate 1, refuses bad
    arguments."""
    order = make_order()
    context = ShipContext(1, BASE_TIME, logging.getLogger("test"))
    parcel = Parcel(order.id, order=order)
    assert await SimulatedShipper(delay_s=0, jitter_s=0.001).ship(parcel, context) is None
    with pytest.raises(RetryableFailure, match="simulated"):
        await SimulatedShipper(delay_s=0, failure_rate=1.0).ship(parcel, context)
    with pytest.raises(ValueError, match="delay"):
        SimulatedShipper(delay_s=-1)
    with pytest.raises(ValueError, match="failure_rate"):
        SimulatedShipper(failure_rate=1.5)


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"max_attempts": 0},
        {"timeout_s": 0},
        {"poll_interval_s": 0},
        {"retry_backoff_s": -1},
        {"lease_s": 1.0},  # fewer than three heartbeats
    ],
)
def test_processor_settings_refuse_bad_values(options: dict[str, float]) -> None:
    """ProcessorSettings refuses zero workers or attempts, non-positive intervals, a
    negative backoff, a lease under three heartbeats."""
    with pytest.raises(ValueError, match="must"):
        ProcessorSettings(**options)  # type: ignore[arg-type]
