"""How a trigger's claims walk the pending orders: each batch from where the one before stopped,
the last one once more from the oldest."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from orderflow.domain import Event, OrderStatus
from orderflow.store.postgres import PostgresOrderStore
from tests.postgres import DATABASE_URL
from tests.postgres_store.conftest import LATER, add_orders

pytestmark = pytest.mark.postgres


async def statuses(store: PostgresOrderStore, ids: list[str]) -> list[OrderStatus]:
    return [(await store.get_order(order_id)).status for order_id in ids]


async def test_a_triggers_batches_go_on_where_the_last_stopped_and_its_last_looks_back(
    store: PostgresOrderStore,
) -> None:
    """Regression: every batch of a trigger started from the oldest pending order, walking the
    index entries of every order claimed before it in that trigger: claiming cost 26 µs of the
    database's CPU an order at 50,000 orders into a trigger, 10 µs now. The last batch still
    finds an order that a lock hid from an earlier one."""
    ids = await add_orders(store, 30)
    trigger = LATER  # every batch of one trigger names the same bound
    locker = await asyncpg.connect(DATABASE_URL, server_settings=store.server_settings)
    try:
        async with locker.transaction():  # a cancel, say, holding order 2 for a moment
            await locker.execute("SELECT FROM orders WHERE id = $1 FOR UPDATE", ids[2])
            assert await store.claim_pending(LATER, 10, trigger) == 10
        assert (
            await statuses(store, ids[:11])
            == [OrderStatus.PROCESSING] * 2 + [OrderStatus.PENDING] + [OrderStatus.PROCESSING] * 8
        )
        assert await store.claim_pending(LATER, 10, trigger) == 10  # 11 to 20, not order 2
        assert (
            await statuses(store, ids[2:3] + ids[11:21])
            == [OrderStatus.PENDING] + [OrderStatus.PROCESSING] * 10
        )
        assert await store.claim_pending(LATER, 10, trigger) == 10  # 21 to 29, then order 2
        assert await store.claim_pending(LATER, 10, trigger) == 0
    finally:
        await locker.close()
    assert set(await statuses(store, ids)) == {OrderStatus.PROCESSING}


async def test_a_new_trigger_starts_from_the_oldest_pending_order(
    store: PostgresOrderStore,
) -> None:
    ids = await add_orders(store, 4)
    assert await store.claim_pending(LATER, 2, LATER) == 2  # a trigger's first (full) batch
    await store.transition(ids[0], Event.RELEASE, LATER, "put back")  # pending again
    later = LATER + timedelta(microseconds=1)  # the next trigger
    assert await store.claim_pending(later, 1, later) == 1
    assert await statuses(store, ids) == [OrderStatus.PROCESSING] * 2 + [OrderStatus.PENDING] * 2
