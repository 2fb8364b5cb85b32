"""Fixtures of the unit tests: a processor and its service over a store and a shipper tests pick,
stores that behave as if shared, or that fail on cue; and for webhook delivery, `deliver`
(runtimes whose deliverer sends to the `receiver` on fast timers) and `on_each_store` (a
runtime on a new store of each backend: the test runs once per backend)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver

from orderflow.claimer import Claimer
from orderflow.processor import Processor, ProcessorSettings
from orderflow.runtime import Runtime
from orderflow.service import OrderService
from orderflow.settings import Settings
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from tests.backends import BACKENDS, another_handle, open_store, webhook_store
from tests.conftest import FakeShipper, ManualClock, RuntimeFactory
from tests.helpers import FAST
from tests.receivers import SECRET, Receiver


class SharedMemoryStore(InMemoryOrderStore):
    """The in-memory store, treated as if other processes shared it."""

    shared = True


class ClosingMemoryStore(InMemoryOrderStore):
    """Remembers whether it was closed."""

    closed = False

    async def close(self) -> None:
        self.closed = True


StartService = Callable[..., Awaitable[OrderService]]


@pytest.fixture
async def start_service(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> AsyncIterator[StartService]:
    """A factory of services whose claimer and processor run: `await start_service(store=…,
    shipper=…, concurrency=…, claim_batch=…, auto_process=…, …)` takes ProcessorSettings
    fields and the claimer's (defaults: the `memory_store` and `shipper` fixtures); every one
    it started is stopped (grace 0) at the end."""
    services: list[OrderService] = []

    async def start(
        *,
        store: OrderStore | None = None,
        shipper_: Any = None,
        claim_batch: int = 1000,
        auto_process: bool = False,
        **fields: Any,
    ) -> OrderService:
        store = memory_store if store is None else store
        settings = ProcessorSettings(**fields)
        processor = Processor(store, shipper if shipper_ is None else shipper_, clock, settings)
        claimer = Claimer(
            store,
            clock,
            processor.wake,
            batch=claim_batch,
            auto_process=auto_process,
            poll_interval_s=settings.poll_interval_s,
        )
        service = OrderService(store, claimer, processor, clock)
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:  # a second stop (the test stopped it already) does nothing
        await service.stop(grace_s=0)


Deliver = Callable[..., Awaitable[Runtime]]


@pytest.fixture
def deliver(start_runtime: RuntimeFactory, receiver: Receiver) -> Deliver:
    """`await deliver(**settings)`: a started runtime (in memory, the fake shipper) subscribed
    to the receiver at start (``--webhook``), on FAST timers unless `settings` say otherwise."""

    async def start(path: str = "/hook", **fields: Any) -> Runtime:
        settings = {**FAST, "webhook": receiver.url_for(path), "webhook_secret": SECRET}
        return await start_runtime(**{**settings, **fields})

    return start


OnEachStore = Callable[..., Awaitable[Runtime]]


@pytest.fixture(params=BACKENDS)
async def on_each_store(request: pytest.FixtureRequest) -> AsyncIterator[OnEachStore]:
    """`await on_each_store(webhook_resolver=…, **settings)`: a runtime started on a new order
    store of each backend (the webhooks' store goes with it), the fake shipper, FAST timers
    unless `settings` say otherwise; one per test, stopped at the end."""
    async with contextlib.AsyncExitStack() as stack:
        # The runtime closes its store when it stops: a handle of its own.
        store = await another_handle(await stack.enter_async_context(open_store(request.param)))
        started: list[Runtime] = []

        async def start(webhook_resolver: AbstractResolver | None = None, **fields: Any) -> Runtime:
            assert not started, "one runtime per test: it closes the store when it stops"
            settings = Settings(**{"shutdown_grace": 0.0, **FAST, **fields})
            runtime = Runtime(
                settings,
                store=store,
                webhook_store=webhook_store(store),
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
        if not started:
            await store.close()
