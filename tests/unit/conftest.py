"""Fixtures of the unit tests: a processor and its service over a store and a shipper tests pick,
and stores that behave as if shared, or that fail on cue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from orderflow.claimer import Claimer
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


async def submit_many(service: OrderService, count: int, customer: str = "Ada") -> list[str]:
    """Submit `count` orders; their ids, oldest first."""
    items = make_order().items
    return [(await service.submit(customer, items)).order_id for _ in range(count)]
