"""What the PostgreSQL store tests share: a store in a schema of its own, orders made ready
(claimed, held by nobody), and a store whose connections go through the `proxy` (a
FaultProxy, tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from orderflow.domain import Item, Order, new_order, new_order_id
from orderflow.store.postgres import PostgresOrderStore
from tests.faultproxy import FaultProxy
from tests.postgres import DATABASE_URL, schema_store

T0 = datetime(2026, 3, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5, microseconds=7)


@pytest.fixture
async def store() -> AsyncIterator[PostgresOrderStore]:
    """A migrated PostgresOrderStore in a schema of its own."""
    async with schema_store() as opened:
        yield opened


def make_order(n: int) -> Order:
    """A pending order, created n milliseconds after T0."""
    at = T0 + timedelta(milliseconds=n)
    return new_order(new_order_id(at, n), f"c{n}", (Item("w", 1),), at)


async def add_orders(store: PostgresOrderStore, count: int, first: int = 0) -> list[str]:
    """`count` new pending orders, created a microsecond apart from T0 on; their ids."""
    ids = []
    for n in range(first, first + count):
        at = T0 + timedelta(microseconds=n)
        order = new_order(new_order_id(at, n), f"c{n}", (Item("w", 1),), at)
        await store.add(order)
        ids.append(order.id)
    return ids


async def add_ready(store: PostgresOrderStore, count: int, first: int = 0) -> list[str]:
    """`count` orders claimed for shipping (processing, held by nobody); their ids."""
    ids = await add_orders(store, count, first)
    assert await store.claim_pending(T0 + timedelta(seconds=1), count) == count
    return ids


def proxied_url(proxy: FaultProxy) -> str:
    """The test database through `proxy`, in plain text (the proxy's patterns read bytes)."""
    url = proxy.url_for(DATABASE_URL)
    return url + ("&" if "?" in url else "?") + "sslmode=disable"


@pytest.fixture
async def proxied_store(
    store: PostgresOrderStore, proxy: FaultProxy
) -> AsyncIterator[PostgresOrderStore]:
    """Another store on `store`'s schema, whose every connection goes through `proxy`."""
    # min_size=0: no connection is opened behind the test's back (asyncpg replaces a broken
    # one at once otherwise), so when the test ends, every connection has ended with it.
    pool = await asyncpg.create_pool(
        proxied_url(proxy),
        min_size=0,
        max_size=2,
        command_timeout=5,
        server_settings=store.server_settings,
    )
    through = PostgresOrderStore(pool, proxied_url(proxy), server_settings=store.server_settings)
    try:
        yield through
    finally:
        await through.close()
