"""OrderService: idempotency keys, lost answers from the store, operators' retries and cancels,
one by one and in bulk."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from orderflow.domain import (
    Event,
    Item,
    Order,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    advance,
)
from orderflow.errors import (
    IdempotencyInFlight,
    IdempotencyMismatch,
    IllegalTransition,
    OrderNotFound,
    OutcomeUnknown,
    ShuttingDown,
    StoreUnavailable,
)
from orderflow.shipping import PermanentFailure
from orderflow.store.base import IdempotencyRecord
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, ManualClock, eventually, make_order, settled
from tests.helpers import submit_many
from tests.unit.conftest import StartService

T = TypeVar("T")
ITEMS = (Item("Widget", 2),)


class _Unreliable(InMemoryOrderStore):
    """Records which methods were called; a method named in `lose` answers OutcomeUnknown once:
    after making the change (True) or without making it (False)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.lose: dict[str, bool] = {}
        self.unavailable: set[str] = set()

    async def _call(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        self.calls.append(name)
        if name in self.unavailable:
            self.unavailable.discard(name)
            raise StoreUnavailable(f"{name}: database down")
        made = self.lose.pop(name, None)
        if made is False:
            raise OutcomeUnknown(f"{name}: connection lost before the commit")
        result = await call()
        if made:
            raise OutcomeUnknown(f"{name}: connection lost after the commit")
        return result

    async def add(
        self, order: Order, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        return await self._call("add", lambda: InMemoryOrderStore.add(self, order, idempotency))

    async def find_order(self, order_id: str) -> Order | None:
        self.calls.append("find_order")
        return await InMemoryOrderStore.find_order(self, order_id)

    async def transition(
        self, order_id: str, event: Event, at: datetime, *args: Any, **kw: Any
    ) -> Order:
        return await self._call(
            "transition",
            lambda: InMemoryOrderStore.transition(self, order_id, event, at, *args, **kw),
        )

    async def delete_pending(self, order_id: str, at: datetime) -> None:
        await self._call(
            "delete_pending", lambda: InMemoryOrderStore.delete_pending(self, order_id, at)
        )

    async def transition_matching(self, *args: Any, **kw: Any) -> tuple[list[str], str | None]:
        self.calls.append("transition_matching")
        return await InMemoryOrderStore.transition_matching(self, *args, **kw)


@pytest.fixture
def store() -> _Unreliable:
    return _Unreliable()


async def _failed(store: InMemoryOrderStore, clock: ManualClock, reason: str) -> Order:
    """A failed order, stored as such."""
    order = make_order(clock)
    order = advance(advance(order, Event.START, clock.now()), Event.FAIL, clock.now(), reason)
    await store.add(order)
    return order


# -- idempotency keys -----------------------------------------------------------------------------


async def test_a_repeated_submit_with_the_same_key_and_body_is_a_replay(
    start_service: StartService, store: _Unreliable
) -> None:
    """Same Idempotency-Key and body: the same order id, flagged as a replay; one order stored."""
    service = await start_service(store=store)
    first = await service.submit("Ada", ITEMS, idempotency_key="k-1")
    again = await service.submit("Ada", (Item("Widget", 2),), idempotency_key="k-1")
    assert not first.replayed
    assert again.replayed
    assert again.order_id == first.order_id
    assert len(store) == 1
    other = await service.submit("Ada", ITEMS, idempotency_key="k-2")
    assert not other.replayed
    assert other.order_id != first.order_id


async def test_a_key_reused_with_another_body_is_refused(
    start_service: StartService, store: _Unreliable
) -> None:
    """Same key, different customer or items: IdempotencyMismatch, nothing stored."""
    service = await start_service(store=store)
    await service.submit("Ada", ITEMS, idempotency_key="k-1")
    with pytest.raises(IdempotencyMismatch):
        await service.submit("Bob", ITEMS, idempotency_key="k-1")
    with pytest.raises(IdempotencyMismatch):
        await service.submit("Ada", (Item("Widget", 3),), idempotency_key="k-1")
    assert len(store) == 1


async def test_a_key_whose_first_submit_is_still_in_flight_is_refused(
    start_service: StartService,
) -> None:
    """A key whose first submit is still in the store's hands: IdempotencyInFlight; once done, a
    replay."""
    entered, go_on = asyncio.Event(), asyncio.Event()

    class _Slow(InMemoryOrderStore):
        async def add(
            self, order: Order, idempotency: IdempotencyRecord | None = None
        ) -> IdempotencyRecord | None:
            entered.set()
            await go_on.wait()
            return await super().add(order, idempotency)

    store = _Slow()
    service = await start_service(store=store)
    first = asyncio.create_task(service.submit("Ada", ITEMS, idempotency_key="k-1"))
    await entered.wait()
    with pytest.raises(IdempotencyInFlight):
        await service.submit("Ada", ITEMS, idempotency_key="k-1")
    go_on.set()
    submitted = await first
    again = await service.submit("Ada", ITEMS, idempotency_key="k-1")  # no longer in flight
    assert again.replayed
    assert again.order_id == submitted.order_id
    assert len(store) == 1


async def test_a_key_is_free_again_after_its_submit_failed(
    start_service: StartService, store: _Unreliable
) -> None:
    """A submit that failed with StoreUnavailable does not leave its key in flight."""
    service = await start_service(store=store)
    store.unavailable.add("add")
    with pytest.raises(StoreUnavailable):
        await service.submit("Ada", ITEMS, idempotency_key="k-1")
    submitted = await service.submit("Ada", ITEMS, idempotency_key="k-1")
    assert not submitted.replayed
    assert len(store) == 1


async def test_idempotency_keys_are_pruned_after_their_ttl(
    store: _Unreliable, clock: ManualClock, start_service: StartService
) -> None:
    """Keys are pruned once older than idempotency_ttl_s, and the key can then be used afresh."""
    service = await start_service(store=store)
    service.idempotency_ttl_s = 60
    await service.submit("Ada", ITEMS, idempotency_key="k-1")
    assert await service.prune_idempotency() == 0
    clock.advance(61)
    assert await service.prune_idempotency() == 1
    assert not (await service.submit("Ada", ITEMS, idempotency_key="k-1")).replayed


# -- answers lost on the way back -----------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "k-1"])
async def test_a_submit_whose_answer_was_lost_after_it_was_made_succeeds(
    start_service: StartService, store: _Unreliable, key: str | None
) -> None:
    """OutcomeUnknown on submit when the order was stored: reported as submitted (with and without a
    key)."""
    service = await start_service(store=store)
    store.lose["add"] = True
    submitted = await service.submit("Ada", ITEMS, idempotency_key=key)
    assert (await store.get_order(submitted.order_id)).status is OrderStatus.PENDING
    assert len(store) == 1
    if key is not None:
        record = await store.find_idempotency(key)
        assert record is not None
        assert record.order_id == submitted.order_id


@pytest.mark.parametrize("key", [None, "k-1"])
async def test_a_submit_whose_answer_was_lost_before_it_was_made_is_unknown(
    start_service: StartService, store: _Unreliable, key: str | None
) -> None:
    """OutcomeUnknown on submit when nothing was stored: raised to the caller."""
    service = await start_service(store=store)
    store.lose["add"] = False
    with pytest.raises(OutcomeUnknown):
        await service.submit("Ada", ITEMS, idempotency_key=key)
    assert len(store) == 0


async def test_a_cancel_whose_answer_was_lost_after_it_was_made_succeeds(
    start_service: StartService, store: _Unreliable
) -> None:
    """OutcomeUnknown on cancel when the cancel was made: the cancelled order is returned."""
    service = await start_service(store=store)
    [order_id] = await submit_many(service, 1)
    store.lose["transition"] = True
    cancelled = await service.cancel_order(order_id, "changed my mind")
    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.history[-1].reason == "changed my mind"


async def test_a_cancel_whose_answer_was_lost_before_it_was_made_is_unknown(
    start_service: StartService, store: _Unreliable
) -> None:
    """OutcomeUnknown on cancel when it was not made: raised; the order is untouched."""
    service = await start_service(store=store)
    [order_id] = await submit_many(service, 1)
    store.lose["transition"] = False
    with pytest.raises(OutcomeUnknown):
        await service.cancel_order(order_id)
    assert (await store.get_order(order_id)).status is OrderStatus.PENDING


async def test_a_delete_whose_answer_was_lost_after_it_was_made_succeeds(
    start_service: StartService, store: _Unreliable
) -> None:
    """OutcomeUnknown on delete when the order is gone: reported as deleted."""
    service = await start_service(store=store)
    [order_id] = await submit_many(service, 1)
    store.lose["delete_pending"] = True
    await service.delete_order(order_id)
    assert await store.find_order(order_id) is None


async def test_a_delete_whose_answer_was_lost_before_it_was_made_is_unknown(
    start_service: StartService, store: _Unreliable
) -> None:
    """OutcomeUnknown on delete when the order is still there: raised."""
    service = await start_service(store=store)
    [order_id] = await submit_many(service, 1)
    store.lose["delete_pending"] = False
    with pytest.raises(OutcomeUnknown):
        await service.delete_order(order_id)
    assert await store.find_order(order_id) is not None


async def test_a_retry_whose_answer_was_lost_after_it_was_made_succeeds(
    start_service: StartService, store: _Unreliable, clock: ManualClock
) -> None:
    """OutcomeUnknown on retry when the retry was made: the pending order is returned."""
    service = await start_service(store=store)
    failed = await _failed(store, clock, "refused")
    store.lose["transition"] = True
    retried = await service.retry_order(failed.id)
    assert retried.status is OrderStatus.PENDING
    assert retried.history[-1].reason == "retried by an operator"


async def test_a_retry_whose_answer_was_lost_before_it_was_made_is_unknown(
    start_service: StartService, store: _Unreliable, clock: ManualClock
) -> None:
    """OutcomeUnknown on retry when it was not made: raised; the order stays failed."""
    service = await start_service(store=store)
    failed = await _failed(store, clock, "refused")
    store.lose["transition"] = False
    with pytest.raises(OutcomeUnknown):
        await service.retry_order(failed.id)
    assert (await store.get_order(failed.id)).status is OrderStatus.FAILED


# -- one order ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "not_an_id", ["", "nope", "order_" + "g" * 30, "order_\x00" + "0" * 29, "../orders"]
)
async def test_what_is_not_an_order_id_is_not_found_without_asking_the_store(
    start_service: StartService, store: _Unreliable, not_an_id: str
) -> None:
    """get/cancel/delete/retry of what cannot be an order id: OrderNotFound, and the store is never
    asked."""
    service = await start_service(store=store)
    store.calls.clear()
    for action in (
        service.get_order,
        service.cancel_order,
        service.delete_order,
        service.retry_order,
    ):
        with pytest.raises(OrderNotFound):
            await action(not_an_id)
    assert store.calls == []


async def test_a_well_formed_id_of_no_order_is_not_found(
    start_service: StartService, store: _Unreliable
) -> None:
    """A well-formed id of no order: OrderNotFound from get, cancel and delete."""
    service = await start_service(store=store)
    missing = make_order().id
    for action in (service.get_order, service.cancel_order, service.delete_order):
        with pytest.raises(OrderNotFound):
            await action(missing)


async def test_only_a_failed_order_can_be_retried(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    """retry_order moves failed orders only (IllegalTransition otherwise), with the operator's
    reason."""
    service = await start_service()
    pending, cancelled = await submit_many(service, 2)
    await service.cancel_order(cancelled)
    shipped = advance(advance(make_order(clock), Event.START, clock.now()), Event.SHIP, clock.now())
    await memory_store.add(shipped)
    for order_id in (pending, cancelled, shipped.id):
        with pytest.raises(IllegalTransition):
            await service.retry_order(order_id)
    failed = await _failed(memory_store, clock, "refused")
    retried = await service.retry_order(failed.id, "carrier is back")
    assert retried.status is OrderStatus.PENDING
    assert retried.history[-1].reason == "carrier is back"
    with pytest.raises(IllegalTransition):
        await service.retry_order(failed.id)  # pending now


async def test_a_failed_order_retried_ships_on_the_next_trigger(
    start_service: StartService, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    """A failed order retried by an operator is claimed by the next trigger and ships once."""
    service = await start_service()
    [order_id] = await submit_many(service, 1)
    shipper.fail_next(order_id, PermanentFailure("address refused"))
    await service.trigger_processing()
    await settled(memory_store)
    assert (await memory_store.get_order(order_id)).status is OrderStatus.FAILED
    await service.retry_order(order_id)
    assert await service.trigger_processing() == 1
    await settled(memory_store)
    done = await memory_store.get_order(order_id)
    assert done.status is OrderStatus.SHIPPED
    assert [h.status for h in done.history] == [
        "pending",
        "processing",
        "failed",
        "pending",
        "processing",
        "shipped",
    ]
    assert shipper.shipped[order_id] == 1


async def test_a_cancel_of_a_finished_order_is_refused(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """Cancel and delete of a shipped order: IllegalTransition."""
    service = await start_service()
    [order_id] = await submit_many(service, 1)
    await service.trigger_processing()
    await settled(memory_store)
    with pytest.raises(IllegalTransition):
        await service.cancel_order(order_id)
    with pytest.raises(IllegalTransition):
        await service.delete_order(order_id)


async def test_a_reversed_time_range_is_empty(start_service: StartService) -> None:
    """A listing whose 'from' is after its 'to' holds nothing ([from, to) is empty)."""
    service = await start_service()
    await service.submit("Ada", (Item("W", 1),))
    now = ManualClock().now()
    page = await service.list_orders(OrderQuery(start=now + timedelta(days=1), end=now))
    assert page.orders == []
    assert page.next_cursor is None


async def test_a_stopping_service_takes_no_new_work(start_service: StartService) -> None:
    """A stopping service refuses submits, bulk actions and readiness with ShuttingDown."""
    service = await start_service()
    service.stopping = True
    with pytest.raises(ShuttingDown):
        await service.submit("Ada", ITEMS)
    with pytest.raises(ShuttingDown):
        await service.act_in_bulk(Event.CANCEL, OrderFilter(), None)
    with pytest.raises(ShuttingDown):
        await service.act_on_ids(Event.CANCEL, [], None)
    with pytest.raises(ShuttingDown):
        await service.ready()
    # A dry run changes nothing: it still answers.
    assert await service.act_in_bulk(Event.CANCEL, OrderFilter(), None, dry_run=True) == 0
    assert await service.act_on_ids(Event.CANCEL, [], None, dry_run=True) == 0


# -- in bulk --------------------------------------------------------------------------------------


async def test_bulk_retry_takes_the_failed_orders_that_match_in_batches(
    start_service: StartService, store: _Unreliable, clock: ManualClock
) -> None:
    """Bulk retry takes failed orders matching the reason and time filters, 1,100 of them in batches
    of at most 1,000."""
    service = await start_service(store=store)
    early = [await _failed(store, clock, "HTTP 503") for _ in range(3)]
    middle = clock.now()
    timeouts = [await _failed(store, clock, f"carrier Timeout #{n}") for n in range(1_100)]
    others = [await _failed(store, clock, "address refused") for _ in range(50)]
    await submit_many(service, 1)  # pending: no retry for it
    store.calls.clear()
    where = OrderFilter(start=middle, reason_contains="timeout")
    assert await service.act_in_bulk(Event.RETRY, where, "carrier back") == 1_100
    assert store.calls.count("transition_matching") >= 2  # at most 1,000 per batch
    for order in timeouts[:3] + timeouts[-3:]:
        retried = await store.get_order(order.id)
        assert retried.status is OrderStatus.PENDING
        assert retried.history[-1].reason == "carrier back"
    for order in early + others:
        assert (await store.get_order(order.id)).status is OrderStatus.FAILED
    counts = await store.count_by_status()
    assert counts[OrderStatus.PENDING] == 1_101
    assert counts[OrderStatus.FAILED] == 53
    # A time range alone: the early ones.
    assert await service.act_in_bulk(Event.RETRY, OrderFilter(end=middle), None) == 3
    assert list(store.check_invariants()) == []


async def test_bulk_cancel_takes_pending_and_processing_and_stops_their_shipments(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    """Bulk cancel takes pending and processing orders (not failed ones) and aborts their shipments
    in flight."""
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=4)
    shipping = await submit_many(service, 3)
    await service.trigger_processing()
    for order_id in shipping:
        await shipper.started_event(order_id).wait()
    waiting = await submit_many(service, 2)
    failed = await _failed(memory_store, clock, "refused")
    assert await service.act_in_bulk(Event.CANCEL, OrderFilter(), "recall") == 5
    await eventually(lambda: service.processor.in_flight == 0)
    assert shipper.cancelled == set(shipping)
    for order_id in shipping:
        shipper.release(order_id)
    for order_id in shipping + waiting:
        cancelled = await memory_store.get_order(order_id)
        assert cancelled.status is OrderStatus.CANCELLED
        assert cancelled.history[-1].reason == "recall"
    assert (await memory_store.get_order(failed.id)).status is OrderStatus.FAILED
    assert sum(shipper.shipped.values()) == 0
    assert service.processor.holdings == {}
    assert list(memory_store.check_invariants()) == []


async def test_bulk_cancel_of_more_than_a_batch_cancels_every_one(
    start_service: StartService, store: _Unreliable
) -> None:
    """Bulk cancel of 1,500 pending orders goes through several batches and cancels each."""
    service = await start_service(store=store)
    await submit_many(service, 1_500)
    store.calls.clear()
    assert await service.act_in_bulk(Event.CANCEL, OrderFilter(), None) == 1_500
    assert store.calls.count("transition_matching") >= 3  # pending twice, processing once
    assert (await store.count_by_status())[OrderStatus.CANCELLED] == 1_500


async def test_bulk_cancel_by_ids_stops_their_shipments_and_skips_what_it_cannot_move(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    shipper = FakeShipper(hold=True)
    service = await start_service(shipper_=shipper, concurrency=4)
    shipping = await submit_many(service, 2)
    await service.trigger_processing()
    for order_id in shipping:
        await shipper.started_event(order_id).wait()
    failed = await _failed(memory_store, clock, "refused")
    ids = [*shipping, failed.id, "order_nonsense", shipping[0]]
    assert await service.act_on_ids(Event.CANCEL, ids, "recall", dry_run=True) == 2
    assert shipper.cancelled == set()
    assert await service.act_on_ids(Event.CANCEL, ids, "recall") == 2
    await eventually(lambda: service.processor.in_flight == 0)
    assert shipper.cancelled == set(shipping)
    for order_id in shipping:
        shipper.release(order_id)
        assert (await memory_store.get_order(order_id)).status is OrderStatus.CANCELLED
    assert (await memory_store.get_order(failed.id)).status is OrderStatus.FAILED
    assert list(memory_store.check_invariants()) == []


async def test_bulk_retry_by_ids_counts_a_retry_whose_answer_was_lost_once_made(
    start_service: StartService, store: _Unreliable, clock: ManualClock
) -> None:
    service = await start_service(store=store)
    failed = await _failed(store, clock, "down")
    store.lose["transition"] = True
    assert await service.act_on_ids(Event.RETRY, [failed.id], None) == 1
    assert (await store.get_order(failed.id)).status is OrderStatus.PENDING
