"""Fixtures of the unit tests: a processor and its service over a store and a shipper tests pick,
and stores that behave as if shared, or that fail on cue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from orderflow.processor import Processor, ProcessorSettings
from orderflow.service import OrderService
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, ManualClock, make_order


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
    """A factory of services whose processor runs: `await start_service(store=…, shipper=…,
    concurrency=…, …)` takes ProcessorSettings fields (defaults: the `memory_store` and
    `shipper` fixtures); every processor it started is stopped (grace 0) at the end."""
    services: list[OrderService] = []

    async def start(
        *, store: OrderStore | None = None, shipper_: Any = None, **fields: Any
    ) -> OrderService:
        store = memory_store if store is None else store
        processor = Processor(
            store, shipper if shipper_ is None else shipper_, clock, ProcessorSettings(**fields)
        )
        await processor.start()
        service = OrderService(store, processor, clock)
        services.append(service)
        return service

    yield start
    for service in services:  # a second stop (the test stopped it already) does nothing
        await service.processor.stop(grace_s=0)


async def submit_many(service: OrderService, count: int, customer: str = "Ada") -> list[str]:
    """Submit `count` orders; their ids, oldest first."""
    items = make_order().items
    return [(await service.submit(customer, items)).order_id for _ in range(count)]
