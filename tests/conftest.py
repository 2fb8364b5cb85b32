"""Shared fixtures: a clock tests control, an order factory, a shipper tests steer, a way to wait
for a condition, a running service (runtime) over the in-memory store, a webhook receiver, a
new PostgreSQL database, and a FaultProxy in front of PostgreSQL."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import pytest
from hypothesis import settings

from orderflow.domain import Item, Order, OrderStatus, Parcel, new_order, new_order_id
from orderflow.runtime import Runtime
from orderflow.settings import Settings
from orderflow.shipping import ShipContext
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from tests.faultproxy import FaultProxy
from tests.postgres import DATABASE_URL, admin_connection, create_database, drop_database
from tests.receivers import Receiver

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
T = TypeVar("T")

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
    """Ships at once, or holds a shipment open until `release(id)`, or fails it; returns
    `results[id]` when set. Records every order it shipped, so tests can check exactly-once,
    and every context it was given."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.shipped: Counter[str] = Counter()
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: set[str] = set()
        self.failures: dict[str, list[BaseException]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.contexts: dict[str, list[ShipContext]] = {}
        self.closed = False
        self._gates: dict[str, asyncio.Event] = {}

    def _gate(self, order_id: str) -> asyncio.Event:
        return self._gates.setdefault(order_id, asyncio.Event())

    def release(self, order_id: str) -> None:
        self._gate(order_id).set()

    def fail_next(self, order_id: str, *errors: BaseException) -> None:
        self.failures.setdefault(order_id, []).extend(errors)

    def started_event(self, order_id: str) -> asyncio.Event:
        return self.started.setdefault(order_id, asyncio.Event())

    async def ship(self, order: Parcel, context: ShipContext) -> dict[str, Any] | None:
        context.deadline  # noqa: B018 - read during the attempt, as a real shipper reads it
        self.contexts.setdefault(order.id, []).append(context)
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
        return self.results.get(order.id)

    async def close(self) -> None:
        self.closed = True


def make_order(
    clock: ManualClock | None = None,
    customer: str = "Ada",
    items: tuple[Item, ...] = (Item("Widget", 2),),
) -> Order:
    at = (clock or ManualClock()).now()
    return new_order(new_order_id(at, 0), customer, items, at)


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout_s: float = ..., interval_s: float = ...
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T], *, timeout_s: float = ..., interval_s: float = ...
) -> T: ...


async def eventually(
    check: Callable[[], Any], *, timeout_s: float = 10.0, interval_s: float = 0.002
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy, and return that; fail
    with the last value after `timeout_s`. For conditions no event announces (another process,
    a database); within one loop, prefer awaiting an asyncio.Event."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s: last {value!r}")
        await asyncio.sleep(interval_s)


def eventually_sync(
    check: Callable[[], T], *, timeout_s: float = 30.0, interval_s: float = 0.05
) -> T:
    """`eventually` for synchronous tests (real processes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s: last {value!r}")
        time.sleep(interval_s)


async def settled(store: OrderStore) -> None:
    """Wait until no order is processing."""

    async def none_processing() -> bool:
        return (await store.count_by_status())[OrderStatus.PROCESSING] == 0

    await eventually(none_processing)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def shipper() -> FakeShipper:
    return FakeShipper()


@pytest.fixture
def memory_store() -> InMemoryOrderStore:
    return InMemoryOrderStore()


RuntimeFactory = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def start_runtime(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> AsyncIterator[RuntimeFactory]:
    """A factory of started runtimes: `await start_runtime(concurrency=8, …)` takes Settings
    fields (shutdown_grace defaults to 0) and `store=`, `webhook_store=`, `shipper_=`,
    `clock_=`, `webhook_resolver=` overrides; every runtime it started is stopped at the end."""
    started: list[Runtime] = []

    async def start(
        *,
        store: Any = None,
        webhook_store: Any = None,
        shipper_: Any = None,
        clock_: Any = None,
        webhook_resolver: Any = None,
        **fields: Any,
    ) -> Runtime:
        fields.setdefault("shutdown_grace", 0.0)
        runtime = Runtime(
            Settings(**fields),
            store=memory_store if store is None else store,
            webhook_store=webhook_store,
            shipper=shipper if shipper_ is None else shipper_,
            clock=clock if clock_ is None else clock_,
            webhook_resolver=webhook_resolver,
        )
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()


@pytest.fixture
async def runtime(start_runtime: RuntimeFactory) -> Runtime:
    """A started runtime over the in-memory store, the fake shipper and the manual clock."""
    return await start_runtime(concurrency=4, process_timeout=5)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver in the test's loop that accepts everything (tests change its `answer`);
    every request it got must have verified."""
    started = await Receiver().start()
    yield started
    await started.close()
    assert not started.failures, started.failures


@pytest.fixture
def database_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    url = asyncio.run(create_database())
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    """A FaultProxy in front of the test PostgreSQL (which must be up under CI=true)."""
    admin = await admin_connection()
    await admin.close()
    target = urlsplit(DATABASE_URL)
    with FaultProxy((target.hostname or "127.0.0.1", target.port or 5432)) as running:
        yield running
        # Let every connection the test closed finish closing first: FaultProxy.stop() ends its
        # loop without running the callbacks that close sockets reset in its last moments, and
        # such a socket is a ResourceWarning (an error here) when collected.
        await eventually(lambda: running.settled)
