"""OutcomeWriter: how the processor records what became of a shipment.

Every write is owner-checked and waits out an outage of the store, so no outcome is lost to it.
With a store shared between processes, the outcomes of many workers go in one round trip
(`OrderStore.transition_many`): the database, not Python, is what limits throughput there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from orderflow.domain import Event, Order
from orderflow.errors import OrderConflict, StoreUnavailable
from orderflow.store.base import OrderStore

T = TypeVar("T")
Change = tuple[str, Event, datetime, str | None]
_BATCH = 500


class OutcomeWriter:
    """Args:
    owner: whose orders these are; a write fails with OrderConflict once the owner lost one.
    giving_up: when true, a write tries three times in an outage, then raises StoreUnavailable
        (the order is then left to `OrderStore.retire`, or to rescue).
    """

    def __init__(self, store: OrderStore, owner: str, giving_up: Callable[[], bool]) -> None:
        self._store = store
        self._owner = owner
        self._giving_up = giving_up
        self._queue: list[tuple[Change, asyncio.Future[Order | None]]] = []
        self._queued = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Batch writes from now on, if the store is shared (one process: each writes alone)."""
        if self._store.shared:
            self._task = asyncio.create_task(self._write_batches(), name="orderflow-writer")

    async def close(self) -> None:
        """Stop batching; call when no write is under way."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def write(self, order_id: str, event: Event, at: datetime, reason: str | None) -> Order:
        """Apply `event` to an order the owner holds; returns the order as written.

        Raises:
            OrderConflict (incl. IllegalTransition): cancelled or taken back meanwhile.
            OrderNotFound, StoreUnavailable (only when giving up).
        """
        if self._task is None:
            return await self._patiently(
                self._store.transition, order_id, event, at, reason, owner=self._owner
            )
        future: asyncio.Future[Order | None] = asyncio.get_running_loop().create_future()
        self._queue.append(((order_id, event, at, reason), future))
        self._queued.set()
        written = await future
        if written is None:
            raise OrderConflict(f"order {order_id} is no longer held by {self._owner}")
        return written

    async def _patiently(self, write: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            return await write(*args, **kwargs)
        except StoreUnavailable:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(StoreUnavailable),
                wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05),
                stop=lambda state: self._giving_up() and state.attempt_number >= 3,
                reraise=True,
            )
            return await retrying(write, *args, **kwargs)

    async def _write_batches(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                batch = self._queue[:_BATCH]
                del self._queue[:_BATCH]
                try:
                    results = await self._patiently(
                        self._store.transition_many, self._owner, [change for change, _ in batch]
                    )
                except Exception as exc:  # the writer must outlive any failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its writer may have been cancelled meanwhile
                        future.set_result(result)
