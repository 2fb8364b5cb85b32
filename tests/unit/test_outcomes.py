"""OutcomeWriter: writes under the processor's current hold, batched, that wait out outages
and recognise their own write behind a lost answer."""

from __future__ import annotations

import asyncio

import pytest

from orderflow.domain import Event, OrderQuery, OrderStatus, Outcome
from orderflow.errors import OutcomeUnknown, StoreUnavailable
from orderflow.outcomes import OutcomeWriter
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import ManualClock, make_order


class _Store(InMemoryOrderStore):
    """Records the size of each write; fails the next `outages` writes with StoreUnavailable,
    and the next `lost_answers` with OutcomeUnknown after making them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []
        self.outages = 0
        self.lost_answers = 0

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
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
    """`count` orders held by "me": id → token (the processor's holdings)."""
    for _ in range(count):
        await store.add(make_order(clock))
    await store.claim_pending(clock.now(), count)
    return {h.order.id: h.token for h in await store.acquire("me", count, 15.0)}


def _writer(
    store: InMemoryOrderStore, clock: ManualClock, holdings: dict[str, int], stopping: bool = False
) -> OutcomeWriter:
    writer = OutcomeWriter(store, "me", clock, holdings, lambda: stopping)
    writer.start()
    return writer


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_outcomes_handed_over_together_go_in_one_write(
    clock: ManualClock, store_type: type[_Store]
) -> None:
    """Outcomes submitted together (as workers finish in one turn of the loop) are written in
    one `write_outcomes`; each order written leaves the holdings."""
    store = store_type()
    holdings = await _held(store, clock, 5)
    writer = _writer(store, clock, holdings)
    for order_id in list(holdings):
        writer.submit(order_id, Event.SHIP)
    await writer.close()
    assert store.writes == [5]
    assert holdings == {}
    for order in (await store.list_orders(OrderQuery(limit=10))).orders:
        assert order.status is OrderStatus.SHIPPED


async def test_a_write_not_held_under_that_hold_is_refused(clock: ManualClock) -> None:
    """A write under a token that is not the order's hold, or to a cancelled order, is False;
    the order leaves the holdings (it is not ours any more)."""
    store = _Store()
    holdings = await _held(store, clock, 1)
    [(order_id, token)] = holdings.items()
    writer = _writer(store, clock, holdings)
    holdings[order_id] = token + 1  # a hold we think we have, and do not
    assert await writer.write(order_id, Event.SHIP) is False
    assert holdings == {}
    holdings[order_id] = token
    await store.transition(order_id, Event.CANCEL, clock.now())
    assert await writer.write(order_id, Event.SHIP) is False
    assert (await store.get_order(order_id)).status is OrderStatus.CANCELLED
    await writer.close()


async def test_nothing_is_written_for_an_order_no_longer_held(clock: ManualClock) -> None:
    """An outcome of an order that left the holdings before its batch (cancelled meanwhile) is
    dropped, not written."""
    store = _Store()
    holdings = await _held(store, clock, 1)
    [order_id] = holdings
    writer = _writer(store, clock, holdings)
    writer.submit(order_id, Event.SHIP)
    del holdings[order_id]  # the processor heard of a cancel before the batch was written
    await writer.close()
    assert store.writes == []
    assert (await store.get_order(order_id)).status is OrderStatus.PROCESSING


async def test_an_order_held_again_meanwhile_is_written_under_its_new_hold(
    clock: ManualClock,
) -> None:
    """Its lease ran out and it was acquired again (a new token) while it shipped here: the
    outcome is written under the new hold, once: the work was done once, by us."""
    store = _Store()
    holdings = await _held(store, clock, 1)
    [(order_id, token)] = holdings.items()
    writer = _writer(store, clock, holdings)
    assert await store.renew("me", {}, 15.0, clock.now()) == set()  # handed back: forgotten
    [again] = await store.acquire("me", 1, 15.0)
    assert again.token != token
    holdings[order_id] = again.token
    writer.submit(order_id, Event.SHIP)
    await writer.close()
    order = await store.get_order(order_id)
    assert order.status is OrderStatus.SHIPPED
    assert [h.status for h in order.history].count(OrderStatus.SHIPPED) == 1


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_a_write_waits_out_an_outage(clock: ManualClock, store_type: type[_Store]) -> None:
    """A write, and a batch, wait out StoreUnavailable and then succeed (both kinds of store)."""
    store = store_type()
    holdings = await _held(store, clock, 2)
    first, second = holdings
    writer = _writer(store, clock, holdings)
    store.outages = 2
    assert await writer.write(first, Event.SHIP) is True
    assert store.writes == [1, 1, 1]
    store.outages = 2
    writer.submit(second, Event.SHIP)
    await writer.close()
    assert store.writes == [1, 1, 1, 1, 1, 1]
    assert (await store.get_order(second)).status is OrderStatus.SHIPPED


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_a_stopping_writer_gives_up_after_a_few_tries(
    clock: ManualClock, store_type: type[_Store], caplog: pytest.LogCaptureFixture
) -> None:
    """When stopping, a write in an outage gives up after three tries, says so, and leaves the
    order to `retire` (or rescue); the writer lives on."""
    store = store_type()
    holdings = await _held(store, clock, 2)
    first, second = holdings
    store.outages = 1_000
    writer = _writer(store, clock, holdings, stopping=True)
    assert await writer.write(first, Event.SHIP) is False
    assert len(store.writes) == 3
    assert "outcome ship not written: database restarting" in caplog.text
    store.outages = 0  # the writer lives on: once the store is back, the next write goes through
    assert await writer.write(second, Event.SHIP) is True
    await writer.close()
    assert (await store.get_order(first)).status is OrderStatus.PROCESSING


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_after_a_lost_answer_our_own_write_refused_on_retry_counts_as_written(
    clock: ManualClock, store_type: type[_Store]
) -> None:
    """The first write was made but its answer lost; the order's history shows our entry, so it
    is not sent again: the outcome was written (once), not lost."""
    store = store_type()
    holdings = await _held(store, clock, 1)
    [order_id] = holdings
    store.lost_answers = 1
    writer = _writer(store, clock, holdings)
    assert await writer.write(order_id, Event.FAIL, "refused") is True
    await writer.close()
    assert store.writes == [1]
    written = await store.get_order(order_id)
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

        async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
            if not self.failed:
                self.failed = True
                await self.transition(outcomes[0].order_id, Event.CANCEL, clock.now())
                raise OutcomeUnknown("connection lost")
            return await super().write_outcomes(owner, outcomes)

    store = _LostBeforeCommit()
    holdings = await _held(store, clock, 1)
    [order_id] = holdings
    writer = _writer(store, clock, holdings)
    assert await writer.write(order_id, Event.SHIP) is False
    await writer.close()
    assert (await store.get_order(order_id)).status is OrderStatus.CANCELLED


async def test_a_write_cancelled_midway_does_not_stop_the_batches(clock: ManualClock) -> None:
    """A retry note is written from a shipment that a cancel can interrupt: the cancel ends that
    write, never the writer's batches."""
    store = _SharedStore()
    holdings = await _held(store, clock, 3)
    first, second, third = holdings
    store.outages = 1_000  # the note waits out an outage when it is cancelled
    writer = _writer(store, clock, holdings)
    note = asyncio.create_task(writer.write(first, Event.REATTEMPT, "busy"))
    await asyncio.sleep(0.01)
    note.cancel()
    with pytest.raises(asyncio.CancelledError):
        await note
    store.outages = 0
    writer.submit(second, Event.SHIP)
    assert await writer.write(third, Event.SHIP) is True
    await writer.close()
    assert (await store.get_order(second)).status is OrderStatus.SHIPPED


@pytest.mark.parametrize("store_type", [_Store, _SharedStore])
async def test_a_reattempt_note_whose_answer_was_lost_is_written_once(
    clock: ManualClock, store_type: type[_Store]
) -> None:
    """Regression: a reattempt keeps the hold, so the retry after a lost answer is not refused
    but made a second time: one failed attempt showed as two in the history and the event log.
    Our own earlier write must be recognised before the retry, not only after a refusal."""
    store = store_type()
    holdings = await _held(store, clock, 1)
    [order_id] = holdings
    store.lost_answers = 1
    writer = _writer(store, clock, holdings)
    note = "attempt 1 of 3 failed (busy); retrying in 0.50s"
    assert await writer.write(order_id, Event.REATTEMPT, note) is True
    await writer.close()
    assert holdings == {order_id: holdings[order_id]}  # a reattempt keeps the hold
    written = await store.get_order(order_id)
    assert [h.reason for h in written.history].count(note) == 1
    events = [e for e in await store.read_events(0, 100) if e.order_id == order_id]
    assert [e.reason for e in events].count(note) == 1


async def test_a_shared_store_gathers_a_batch_for_its_window(clock: ManualClock) -> None:
    """On a shared store, outcomes handed over within `window_s` of the first go in one round
    trip, even when they do not come in one turn of the loop."""
    store = _SharedStore()
    holdings = await _held(store, clock, 3)
    writer = OutcomeWriter(store, "me", clock, holdings, lambda: False, window_s=0.05)
    writer.start()
    for order_id in list(holdings):
        writer.submit(order_id, Event.SHIP)
        await asyncio.sleep(0.005)
    await writer.close()
    assert store.writes == [3]
