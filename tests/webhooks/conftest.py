"""Fixtures of the webhook tests: `webhooks`, a WebhookStore over every backend (each test that
takes it runs once per backend: the conformance suite); a started `receiver`; `deliver`, a
factory of started runtimes whose deliverer sends to the receiver on fast timers; `on_each_store`,
a factory of started runtimes on each order store (the test runs once per backend)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver

from orderflow.domain import Item
from orderflow.runtime import Runtime
from orderflow.settings import Settings
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.sqlite import SqliteOrderStore
from orderflow.webhooks.postgres import PostgresWebhookStore
from orderflow.webhooks.sqlite import SqliteWebhookStore
from orderflow.webhooks.store import InMemoryWebhookStore, WebhookStore
from tests.conftest import FakeShipper, ManualClock, RuntimeFactory
from tests.postgres import same_schema, schema_store
from tests.sqlite import file_store, sqlite_url
from tests.webhooks.receiver import SECRET, Receiver

BACKENDS = ["memory", "sqlite", "postgres"]
# Retries after 50, 100 and 200 ms; look for due work every 50 ms.
FAST = {
    "webhook_retry_schedule": "0.05,0.1,0.2",
    "poll_interval": 0.05,
    "webhook_timeout": 2.0,
    "webhook_allow_private": True,  # the receiver is on loopback
}


@pytest.fixture(params=BACKENDS)
async def webhooks(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WebhookStore]:
    if request.param == "memory":
        yield InMemoryWebhookStore()
    elif request.param == "sqlite":
        async with file_store(tmp_path) as orders:
            yield SqliteWebhookStore(orders.database)
    else:
        async with schema_store() as orders:
            yield PostgresWebhookStore(orders.database)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver that accepts everything (tests change its `answer`); every request it got
    must have verified."""
    started = await Receiver().start()
    yield started
    await started.close()
    assert not started.failures, started.failures


Deliver = Callable[..., Awaitable[Runtime]]


@pytest.fixture
def deliver(start_runtime: RuntimeFactory, receiver: Receiver) -> Deliver:
    """`await deliver(**settings)`: a started runtime (in memory, the fake shipper) subscribed
    to the receiver at start (``--webhook``), on FAST timers unless `settings` say otherwise."""

    async def start(path: str = "/hook", **fields: Any) -> Runtime:
        settings = {**FAST, "webhook": receiver.url_for(path), "webhook_secret": SECRET}
        return await start_runtime(**{**settings, **fields})

    return start


async def submit(runtime: Runtime, count: int) -> list[str]:
    """Submit `count` orders; their ids."""
    ids = []
    for n in range(count):
        done = await runtime.service.submit(f"customer {n}", (Item("Widget", 1),))
        ids.append(done.order_id)
    return ids


OnEachStore = Callable[..., Awaitable[Runtime]]


@pytest.fixture(params=BACKENDS)
async def on_each_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OnEachStore]:
    """`await on_each_store(webhook_resolver=…, **settings)`: a runtime started on a new order
    store of each backend (the webhooks' store goes with it), the fake shipper, FAST timers
    unless `settings` say otherwise; one per test, stopped at the end."""
    async with contextlib.AsyncExitStack() as stack:
        store: OrderStore
        webhook_store: WebhookStore
        if request.param == "memory":
            store, webhook_store = InMemoryOrderStore(), InMemoryWebhookStore()
        elif request.param == "sqlite":
            sqlite = await SqliteOrderStore.open(sqlite_url(tmp_path))
            store, webhook_store = sqlite, SqliteWebhookStore(sqlite.database)
        else:
            postgres = await same_schema(await stack.enter_async_context(schema_store()))
            store, webhook_store = postgres, PostgresWebhookStore(postgres.database)
        started: list[Runtime] = []

        async def start(webhook_resolver: AbstractResolver | None = None, **fields: Any) -> Runtime:
            assert not started, "one runtime per test: it closes the store when it stops"
            settings = Settings(**{"shutdown_grace": 0.0, **FAST, **fields})
            runtime = Runtime(
                settings,
                store=store,
                webhook_store=webhook_store,
                shipper=FakeShipper(),
                clock=ManualClock(),
                webhook_resolver=webhook_resolver,
            )
            await runtime.start()
            started.append(runtime)
            return runtime

        yield start
        for runtime in started:
            await runtime.stop()
        if not started and isinstance(store, SqliteOrderStore):  # a runtime closes its store
            await store.close()
