"""OutcomeWriter: batched, owner-checked writes for a shared store."""

from __future__ import annotations

import asyncio

from orderflow.domain import Event, OrderStatus
from orderflow.outcomes import OutcomeWriter
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import ManualClock, make_order


class _SharedMemoryStore(InMemoryOrderStore):
    shared = True


async def test_a_writer_cancelled_while_waiting_does_not_stop_the_batches() -> None:
    """Regression risk: a retry note is written from a shipment that a cancel can interrupt;
    setting the result of its cancelled future would have ended the batch writer."""
    clock, store = ManualClock(), _SharedMemoryStore()
    orders = [make_order(clock) for _ in range(2)]
    for order in orders:
        await store.add(order)
    await store.claim_pending(clock.now(), 2)
    await store.acquire("me", 2)
    writer = OutcomeWriter(store, "me", lambda: False)
    writer.start()
    try:
        first = asyncio.create_task(writer.write(orders[0].id, Event.SHIP, clock.now(), None))
        await asyncio.sleep(0)  # queued, not yet written
        first.cancel()
        written = await writer.write(orders[1].id, Event.SHIP, clock.now(), None)
        assert written.status is OrderStatus.SHIPPED
        assert first.cancelled()
        assert (await store.get_order(orders[0].id)).status is OrderStatus.SHIPPED
    finally:
        await writer.close()
