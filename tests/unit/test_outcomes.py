"""OutcomeWriter: owner-checked writes that wait out outages, batched for a shared store, and
that recognise their own write behind a lost answer."""

from __future__ import annotations

import asyncio

import pytest

from orderflow.domain import Event, Order, OrderStatus, Outcome
from orderflow.errors import OutcomeUnknown, StoreUnavailable
from orderflow.outcomes import OutcomeWriter
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import ManualClock, make_order
from tests.unit.conftest import SharedMemoryStore


class _Store(InMemoryOrderStore):
    """Records the size of each write; fails the next `outages` writes with StoreUnavailable,
    and the next `lost_answers` with OutcomeUnknown after making them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []
        self.outages = 0
        self.lost_answers = 0

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[Order | None]:
        self.writes.append(len(outcomes))
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("database restarting")
        written = await super().write_outcomes(owner, outcomes)
        if self.lost_answers:
            self.lost_answers -= 1
            raise OutcomeUnknown("connection lost before the answer")
        return written


class _SharedStore(_Store):
    shared = True


async def _held(store: InMemoryOrderStore, clock: ManualClock, count: int) -> dict[str, int]:
    """`count` orders held by "me": id → token."""
    for _ in range(count):
        await store.add(make_order(clock))
    await store.claim_pending(clock.now(), count)
    return {h.order.id: h.token for h in await store.acquire("me", count, 15.0)}


async def test_a_shared_store_gets_the_outcomes_of_many_workers_in_one_write(
    clock: ManualClock,
) -> None:
    """With a shared store, outcomes written at once go to the store in one `write_outcomes`
    call."""
    store = _SharedStore()
    holds = await _held(store, clock, 5)
    writer = OutcomeWriter(store, "me", lambda: False)
    writer.start()
    try:
        at = clock.now()
        written = await asyncio.gather(
            *(writer.write(Outcome(i, t, Event.SHIP, at)) for i, t in holds.items())
        )
    finally:
        await writer.close()
    assert store.writes == [5]
    assert all(o is not None and o.status is OrderStatus.SHIPPED for o in written)


async def test_a_store_of_one_process_gets_each_outcome_alone(clock: ManualClock) -> None:
    """With a store of one process, each outcome is written on its own (no batching task)."""
    store = _Store()
    holds = await _held(store, clock, 3)
    writer = OutcomeWriter(store, "me", lambda: False)
    writer.start()  # does nothing: nobody else shares the store
    at = clock.now()
    await asyncio.gather(*(writer.write(Outcome(i, t, Event.SHIP, at)) for i, t in holds.items()))
    await writer.close()
    assert store.writes == [1, 1, 1]


async def test_a_write_not_held_under_that_hold_returns_none(clock: ManualClock) -> None:
    """A write under a token that is not the order's hold, or to a cancelled order, returns None."""
    store = _Store()
    [(order_id, token)] = (await _held(store, clock, 1)).items()
    writer = OutcomeWriter(store, "me", lambda: False)
    assert await writer.write(Outcome(order_id, token + 1, Event.SHIP, clock.now())) is None
    await store.transition(order_id, Event.CANCEL, clock.now())
    assert await writer.write(Outcome(order_id, token, Event.SHIP, clock.now())) is None
    assert (await store.get_order(order_id)).status is OrderStatus.CANCELLED


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_a_write_waits_out_an_outage(clock: ManualClock, store_type: type[_Store]) -> None:
    """A write waits out StoreUnavailable and then succeeds (both modes)."""
    store = store_type()
    [(order_id, token)] = (await _held(store, clock, 1)).items()
    store.outages = 2
    writer = OutcomeWriter(store, "me", lambda: False)
    writer.start()
    try:
        written = await writer.write(Outcome(order_id, token, Event.SHIP, clock.now()))
    finally:
        await writer.close()
    assert written is not None
    assert written.status is OrderStatus.SHIPPED
    assert store.writes == [1, 1, 1]


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_a_stopping_writer_gives_up_after_a_few_tries(
    clock: ManualClock, store_type: type[_Store]
) -> None:
    """When stopping, a write in an outage gives up after three tries and raises; the writer lives
    on."""
    store = store_type()
    holds = await _held(store, clock, 2)
    (first, first_token), (second, second_token) = holds.items()
    store.outages = 1_000
    writer = OutcomeWriter(store, "me", lambda: True)
    writer.start()
    try:
        with pytest.raises(StoreUnavailable, match="restarting"):
            await writer.write(Outcome(first, first_token, Event.SHIP, clock.now()))
        assert len(store.writes) == 3
        # The writer lives on: once the store is back, the next write goes through.
        store.outages = 0
        written = await writer.write(Outcome(second, second_token, Event.SHIP, clock.now()))
        assert written is not None
    finally:
        await writer.close()
    assert (await store.get_order(first)).status is OrderStatus.PROCESSING


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_after_a_lost_answer_our_own_write_refused_on_retry_counts_as_written(
    clock: ManualClock, store_type: type[_Store]
) -> None:
    """The first write was made but its answer lost; the order's history shows our entry, so it
    is not sent again: the outcome was written (once), not lost."""
    store = store_type()
    [(order_id, token)] = (await _held(store, clock, 1)).items()
    store.lost_answers = 1
    writer = OutcomeWriter(store, "me", lambda: False)
    writer.start()
    try:
        written = await writer.write(Outcome(order_id, token, Event.FAIL, clock.now(), "refused"))
    finally:
        await writer.close()
    assert store.writes == [1]
    assert written is not None
    assert written.status is OrderStatus.FAILED
    assert written.history[-1].reason == "refused"
    assert [h.status for h in written.history].count(OrderStatus.FAILED) == 1


async def test_after_a_lost_answer_someone_elses_change_is_not_taken_for_ours(
    clock: ManualClock,
) -> None:
    """The first write was not made (the connection broke before the commit), and meanwhile
    the order was cancelled: the refusal is reported as a refusal."""

    class _LostBeforeCommit(InMemoryOrderStore):
        failed = False

        async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[Order | None]:
            if not self.failed:
                self.failed = True
                await self.transition(outcomes[0].order_id, Event.CANCEL, clock.now())
                raise OutcomeUnknown("connection lost")
            return await super().write_outcomes(owner, outcomes)

    store = _LostBeforeCommit()
    [(order_id, token)] = (await _held(store, clock, 1)).items()
    writer = OutcomeWriter(store, "me", lambda: False)
    assert await writer.write(Outcome(order_id, token, Event.SHIP, clock.now())) is None
    assert (await store.get_order(order_id)).status is OrderStatus.CANCELLED


async def test_a_writer_cancelled_while_waiting_does_not_stop_the_batches(
    clock: ManualClock,
) -> None:
    """Regression risk: a retry note is written from a shipment that a cancel can interrupt;
    setting the result of its cancelled future would have ended the batch writer."""
    store = SharedMemoryStore()
    holds = await _held(store, clock, 2)
    (first, first_token), (second, second_token) = holds.items()
    writer = OutcomeWriter(store, "me", lambda: False)
    writer.start()
    try:
        waiting = asyncio.create_task(
            writer.write(Outcome(first, first_token, Event.SHIP, clock.now()))
        )
        await asyncio.sleep(0)  # queued, not yet written
        waiting.cancel()
        written = await writer.write(Outcome(second, second_token, Event.SHIP, clock.now()))
        assert written is not None
        assert written.status is OrderStatus.SHIPPED
        assert waiting.cancelled()
        assert (await store.get_order(first)).status is OrderStatus.SHIPPED
    finally:
        await writer.close()


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_a_reattempt_note_whose_answer_was_lost_is_written_once(
    clock: ManualClock, store_type: type[_Store]
) -> None:
    """Regression: a reattempt keeps the hold, so the retry after a lost answer is not refused
    but made a second time: one failed attempt showed as two in the history and the event log.
    Our own earlier write must be recognised before the retry, not only after a refusal."""
    store = store_type()
    [(order_id, token)] = (await _held(store, clock, 1)).items()
    store.lost_answers = 1
    writer = OutcomeWriter(store, "me", lambda: False)
    writer.start()
    try:
        note = "attempt 1 of 3 failed (busy); retrying in 0.50s"
        written = await writer.write(Outcome(order_id, token, Event.REATTEMPT, clock.now(), note))
    finally:
        await writer.close()
    assert written is not None
    assert [h.reason for h in written.history].count(note) == 1
    events = [e for e in await store.read_events(0, 100) if e.order_id == order_id]
    assert [e.reason for e in events].count(note) == 1
