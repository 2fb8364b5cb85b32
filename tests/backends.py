"""Every store backend the tests run against, by name: `BACKENDS`. A suite parametrised over it
runs once per backend; a new backend is one more name here and one more branch in each function.

`open_store(name)` opens a new, empty OrderStore (closed afterwards); `another_handle(store)` is
the same data through another handle, as another thread's event loop or another process would
have it; `webhook_store(orders)` is the WebhookStore beside an order store.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.postgres import PostgresOrderStore
from orderflow.store.sqlite import SqliteOrderStore
from orderflow.webhooks.postgres import PostgresWebhookStore
from orderflow.webhooks.sqlite import SqliteWebhookStore
from orderflow.webhooks.store import InMemoryWebhookStore, WebhookStore
from tests.postgres import same_schema, schema_store
from tests.sqlite import file_store

BACKENDS = ("memory", "sqlite", "postgres")


@asynccontextmanager
async def open_store(backend: str) -> AsyncIterator[OrderStore]:
    """A new, empty OrderStore of `backend` (SQLite: a file in a folder of its own;
    PostgreSQL: in a schema of its own; either dropped afterwards)."""
    if backend == "memory":
        store = InMemoryOrderStore()
        try:
            yield store
        finally:
            await store.close()
    elif backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            async with file_store(Path(folder)) as sqlite:
                yield sqlite
    elif backend == "postgres":
        async with schema_store() as postgres:
            yield postgres
    else:
        raise ValueError(f"no such backend: {backend}")


async def another_handle(store: OrderStore) -> OrderStore:
    """`store`'s data through a handle of its own, for another event loop, or to be closed
    without closing `store`: another pool on the same schema for PostgreSQL; the in-memory
    store is its own (it holds no connection, and is bound to no loop), and so is a SQLite
    store (one process holds a file: its threads share the store, each reads on a connection
    of its own)."""
    if isinstance(store, PostgresOrderStore):
        return await same_schema(store)
    return store


def webhook_store(orders: OrderStore) -> WebhookStore:
    """The WebhookStore that goes with `orders` (in its database or file)."""
    if isinstance(orders, PostgresOrderStore):
        return PostgresWebhookStore(orders.database)
    if isinstance(orders, SqliteOrderStore):
        return SqliteWebhookStore(orders.database)
    return InMemoryWebhookStore()
