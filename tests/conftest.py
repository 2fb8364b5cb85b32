"""Shared fixtures: a clock tests control, an order factory, and a shipper tests steer."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings

from orderflow.domain import Item, Order, new_order, new_order_id
from orderflow.processor import Processor
from orderflow.service import OrderService
from orderflow.store.memory import InMemoryOrderStore
from tests.postgres import create_database, drop_database

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)

# CI runs the same examples every time, so a red build always means a change broke something;
# locally every run explores new ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


class ManualClock:
    """A Clock that moves only when told (1 µs per reading, so every order gets its own)."""

    def __init__(self, start: datetime = BASE_TIME) -> None:
        self.current = start
        self._entropy = 0

    def now(self) -> datetime:
        self.current += timedelta(microseconds=1)
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)

    def entropy(self) -> int:
        self._entropy += 1
        return self._entropy


class FakeShipper:
    """Ships at once, or holds a shipment open until `release(id)`, or fails it.

    Records every order it shipped, so tests can check exactly-once.
    """

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.shipped: Counter[str] = Counter()
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: set[str] = set()
        self.failures: dict[str, list[BaseException]] = {}
        self._gates: dict[str, asyncio.Event] = {}

    def _gate(self, order_id: str) -> asyncio.Event:
        return self._gates.setdefault(order_id, asyncio.Event())

    def release(self, order_id: str) -> None:
        self._gate(order_id).set()

    def fail_next(self, order_id: str, *errors: BaseException) -> None:
        self.failures.setdefault(order_id, []).extend(errors)

    def started_event(self, order_id: str) -> asyncio.Event:
        return self.started.setdefault(order_id, asyncio.Event())

    async def ship(self, order: Order) -> None:
        self.started_event(order.id).set()
        try:
            if self.hold:
                await self._gate(order.id).wait()
            else:
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled.add(order.id)
            raise
        errors = self.failures.get(order.id)
        if errors:
            raise errors.pop(0)
        self.shipped[order.id] += 1


def make_order(
    clock: ManualClock | None = None,
    customer: str = "Ada",
    items: tuple[Item, ...] = (Item("Widget", 2),),
) -> Order:
    at = (clock or ManualClock()).now()
    return new_order(new_order_id(at, 0), customer, items, at)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def shipper() -> FakeShipper:
    return FakeShipper()


@pytest.fixture
def database_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    url = asyncio.run(create_database())
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


@pytest.fixture
def memory_store() -> InMemoryOrderStore:
    return InMemoryOrderStore()


@pytest.fixture
async def running_service(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> AsyncIterator[OrderService]:
    processor = Processor(memory_store, shipper, clock, concurrency=4, timeout_s=5)
    await processor.start()
    try:
        yield OrderService(memory_store, processor, clock)
    finally:
        await processor.stop(grace_s=0)


async def wait_until_settled(store: InMemoryOrderStore, *, rounds: int = 10_000) -> None:
    """Yield to the loop until no order is processing (bounded: at most `rounds` ms)."""
    from orderflow.domain import OrderStatus

    for _ in range(rounds):
        counts = await store.count_by_status()
        if not counts.get(OrderStatus.PROCESSING):
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"orders still processing: {counts}")
