"""What only the in-memory store does: its walk over orders of a status it does not index."""

from __future__ import annotations

import pytest

from orderflow.domain import Event, OrderQuery, OrderStatus
from orderflow.store import memory
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import ManualClock, make_order


async def test_processing_pages_walk_a_bounded_stretch_and_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: listing processing orders walked every order in the range under the lock
    (a third of a second with a million orders, the whole server waiting)."""
    monkeypatch.setattr(memory, "_MAX_WALK", 7)
    clock, store = ManualClock(), InMemoryOrderStore()
    orders = [make_order(clock) for _ in range(40)]
    for order in orders:
        await store.add(order)
    await store.claim_pending(clock.now(), 40)
    for n, order in enumerate(orders):  # all but every tenth leave processing
        if n % 10:
            await store.transition(order.id, Event.CANCEL, clock.now())
    processing = [order.id for order in orders[::10]]
    seen, cursor, pages = [], None, 0
    while True:
        page = await store.list_orders(
            OrderQuery(status=OrderStatus.PROCESSING, limit=2, cursor=cursor)
        )
        pages += 1
        assert len(page.orders) <= 2
        seen += [order.id for order in page.orders]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == processing
    assert pages >= 40 // 7  # no page walked more than 7 orders
