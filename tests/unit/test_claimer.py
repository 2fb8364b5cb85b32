"""The claimer: a trigger claims what is pending at that moment, in batches; auto-process claims
soon after each submit; a stopped claimer takes no trigger."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from orderflow.claimer import Claimer
from orderflow.domain import OrderStatus
from orderflow.errors import OutcomeUnknown, ShuttingDown, StoreUnavailable
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, ManualClock, eventually, make_order
from tests.helpers import submit_many
from tests.unit.conftest import StartService


class _Claims(InMemoryOrderStore):
    """Records each claim's limit and count; before the claim numbered `arrive_before`, adds a
    new order (one arriving mid-trigger); the claim numbered `fail_at` fails with `failure`."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.claims: list[tuple[int, int]] = []
        self.arrive_before: int | None = None
        self.arrived: list[str] = []
        self.fail_at: int | None = None
        self.failure: Exception = OutcomeUnknown("connection lost mid-commit")

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        number = len(self.claims) + 1
        if number == self.arrive_before:
            late = make_order(self.clock)
            await self.add(late)
            self.arrived.append(late.id)
        if number == self.fail_at:
            self.claims.append((limit, 0))
            raise self.failure
        claimed = await super().claim_pending(at, limit, created_before)
        self.claims.append((limit, claimed))
        return claimed


async def _add(store: InMemoryOrderStore, clock: ManualClock, count: int) -> list[str]:
    orders = [make_order(clock) for _ in range(count)]
    for order in orders:
        await store.add(order)
    return [order.id for order in orders]


async def test_a_trigger_claims_only_what_was_pending_when_it_began_in_batches(
    clock: ManualClock,
) -> None:
    """A trigger claims in batches of at most `batch`, only orders created before it began, waking
    the fetcher per batch."""
    store = _Claims(clock)
    ids = await _add(store, clock, 10)
    store.arrive_before = 2  # an order arrives between the first and the second batch
    woken: list[int] = []
    claimer = Claimer(store, clock, lambda: woken.append(1), batch=4)
    claimer.start()
    assert await claimer.trigger() == 10
    assert store.claims == [(4, 4), (4, 4), (4, 2)]
    assert len(woken) == 3  # the fetcher is told after each batch that claimed something
    for order_id in ids:
        assert (await store.get_order(order_id)).status is OrderStatus.PROCESSING
    [late] = store.arrived
    assert (await store.get_order(late)).status is OrderStatus.PENDING
    assert await claimer.trigger() == 1  # the next trigger takes it
    await claimer.stop()


async def test_a_trigger_with_nothing_pending_claims_nothing_and_wakes_nobody(
    clock: ManualClock,
) -> None:
    """A trigger with nothing pending returns 0 and wakes no fetcher."""
    woken: list[int] = []
    claimer = Claimer(InMemoryOrderStore(), clock, lambda: woken.append(1), batch=4)
    claimer.start()
    assert await claimer.trigger() == 0
    assert woken == []
    await claimer.stop()


async def test_a_trigger_of_an_exact_multiple_of_the_batch_stops_on_an_empty_batch(
    clock: ManualClock,
) -> None:
    """A full last batch is followed by one empty claim, then the trigger ends."""
    store = _Claims(clock)
    await _add(store, clock, 8)
    claimer = Claimer(store, clock, lambda: None, batch=4)
    claimer.start()
    assert await claimer.trigger() == 8
    assert store.claims == [(4, 4), (4, 4), (4, 0)]
    await claimer.stop()


async def test_an_unknown_outcome_mid_trigger_says_how_many_were_claimed_before(
    clock: ManualClock,
) -> None:
    """OutcomeUnknown after some batches says how many were claimed; a new trigger claims the
    rest."""
    store = _Claims(clock)
    await _add(store, clock, 10)
    store.fail_at = 3
    claimer = Claimer(store, clock, lambda: None, batch=4)
    claimer.start()
    with pytest.raises(OutcomeUnknown, match=r"^8 orders were claimed, then: connection lost"):
        await claimer.trigger()
    assert (await store.count_by_status())[OrderStatus.PROCESSING] == 8
    store.fail_at = None
    assert await claimer.trigger() == 2  # a new trigger claims the rest
    await claimer.stop()


async def test_an_outage_before_the_first_batch_is_raised_as_it_is(clock: ManualClock) -> None:
    """StoreUnavailable on the first batch reaches the caller unchanged."""
    store = _Claims(clock)
    await _add(store, clock, 3)
    store.fail_at, store.failure = 1, StoreUnavailable("database down")
    claimer = Claimer(store, clock, lambda: None, batch=4)
    claimer.start()
    with pytest.raises(StoreUnavailable, match=r"^database down$"):
        await claimer.trigger()
    await claimer.stop()


async def test_a_claimer_takes_no_trigger_before_start_nor_after_stop(
    clock: ManualClock,
) -> None:
    """ShuttingDown before start and after stop; nothing is claimed."""
    store = InMemoryOrderStore()
    await _add(store, clock, 2)
    claimer = Claimer(store, clock, lambda: None)
    with pytest.raises(ShuttingDown):
        await claimer.trigger()
    claimer.start()
    await claimer.stop()
    with pytest.raises(ShuttingDown):
        await claimer.trigger()
    assert (await store.count_by_status())[OrderStatus.PENDING] == 2


async def test_stop_lets_the_batch_in_progress_finish_then_ends_the_trigger(
    clock: ManualClock,
) -> None:
    """A trigger in progress when the claimer stops ends after its batch: nothing is claimed
    after the stop returns."""
    entered, go_on = asyncio.Event(), asyncio.Event()

    class _Paused(InMemoryOrderStore):
        async def claim_pending(
            self, at: datetime, limit: int, created_before: datetime | None = None
        ) -> int:
            entered.set()
            await go_on.wait()
            return await super().claim_pending(at, limit, created_before)

    store = _Paused()
    await _add(store, clock, 10)
    claimer = Claimer(store, clock, lambda: None, batch=4)
    claimer.start()
    trigger = asyncio.create_task(claimer.trigger())
    await entered.wait()
    stopping = asyncio.create_task(claimer.stop())
    await asyncio.sleep(0)
    assert not stopping.done()  # it waits for the batch under way
    go_on.set()
    await stopping
    assert await trigger == 4
    assert (await store.count_by_status())[OrderStatus.PROCESSING] == 4


def test_a_claimer_refuses_an_empty_batch(clock: ManualClock) -> None:
    """A claim batch below 1 is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        Claimer(InMemoryOrderStore(), clock, lambda: None, batch=0)


async def test_auto_process_claims_and_ships_soon_after_each_submit(
    start_service: StartService, shipper: FakeShipper
) -> None:
    # The poll interval is far longer than the test may take: only the wake-up can do it.
    """With auto-process, each submit is claimed and shipped soon after, by the wake-up, not the
    poll."""
    service = await start_service(auto_process=True, poll_interval_s=60, concurrency=2)
    first = await submit_many(service, 3)
    await eventually(lambda: set(shipper.shipped) == set(first))
    later = await submit_many(service, 2)
    await eventually(lambda: set(shipper.shipped) == set(first + later))
    assert all(count == 1 for count in shipper.shipped.values())


async def test_without_auto_process_a_submit_is_not_claimed(
    start_service: StartService, memory_store: InMemoryOrderStore
) -> None:
    """Without auto-process, `claim_soon` does nothing and orders stay pending."""
    service = await start_service(auto_process=False, poll_interval_s=0.01)
    [order_id] = await submit_many(service, 1)
    service.claimer.claim_soon()  # does nothing without auto-process
    await asyncio.sleep(0.05)  # a few poll intervals: nothing may claim it meanwhile
    assert (await memory_store.get_order(order_id)).status is OrderStatus.PENDING


async def test_a_trigger_that_takes_long_answers_early_and_claims_the_rest_after(
    clock: ManualClock,
) -> None:
    """A trigger whose slices take longer than `answer_within_s` answers then, with the count
    of what it claimed and what is still to be claimed; the rest is claimed in the background,
    every one of them, while orders submitted after the trigger stay pending."""
    slices = 0

    class _Slow(InMemoryOrderStore):
        async def claim_pending(
            self, at: datetime, limit: int, created_before: datetime | None = None
        ) -> int:
            nonlocal slices
            slices += 1
            await asyncio.sleep(0.01)
            return await super().claim_pending(at, limit, created_before)

    store = _Slow()
    await _add(store, clock, 40)
    claimer = Claimer(store, clock, lambda: None, batch=4, answer_within_s=0.025)
    claimer.start()
    try:
        assert await claimer.trigger() == 40
        assert slices < 10  # answered before every slice was done
        late = await _add(store, clock, 3)  # submitted after the trigger: not its orders
        await eventually(lambda: claimer.claimed == 40)
        counts = await store.count_by_status()
        assert (counts[OrderStatus.PROCESSING], counts[OrderStatus.PENDING]) == (40, 3)
        assert [(await store.get_order(i)).status for i in late] == [OrderStatus.PENDING] * 3
    finally:
        await claimer.stop()
