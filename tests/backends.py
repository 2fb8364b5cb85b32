"""Every store backend the tests run against, by name: `BACKENDS`. A suite parametrised over it
runs once per backend; a new backend is one more name here and one more branch in each function.

`open_store(name)` opens a new, empty OrderStore (closed afterwards); `another_handle(store)` is
the same data through another handle, as another thread's event loop or another process would
have it; `webhook_store(orders)` is the WebhookStore beside an order store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.postgres import PostgresOrderStore
from orderflow.webhooks.postgres import PostgresWebhookStore
from orderflow.webhooks.store import InMemoryWebhookStore, WebhookStore
from tests.postgres import same_schema, schema_store

BACKENDS = ("memory", "postgres")


@asynccontextmanager
async def open_store(backend: str) -> AsyncIterator[OrderStore]:
    """A new, empty OrderStore of `backend` (PostgreSQL: in a schema of its own, dropped
    afterwards)."""
    if backend == "memory":
        store = InMemoryOrderStore()
        try:
            yield store
        finally:
            await store.close()
    elif backend == "postgres":
        async with schema_store() as postgres:
            yield postgres
    else:
        raise ValueError(f"no such backend: {backend}")


async def another_handle(store: OrderStore) -> OrderStore:
    """`store`'s data through a handle of its own, for another event loop, or to be closed
    without closing `store`: another pool on the same schema for PostgreSQL; the in-memory
    store is its own (it holds no connection, and is bound to no loop)."""
    if isinstance(store, PostgresOrderStore):
        return await same_schema(store)
    return store


def webhook_store(orders: OrderStore) -> WebhookStore:
    """The WebhookStore that goes with `orders` (on PostgreSQL: in its database and schema)."""
    if isinstance(orders, PostgresOrderStore):
        return PostgresWebhookStore(orders.database)
    return InMemoryWebhookStore()
