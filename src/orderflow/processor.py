"""Processor: a fixed pool of asyncio workers that ship claimed orders, each under a timeout.

A trigger claims pending orders from the store in batches (pending → processing, atomic per
batch) and queues their ids; each worker takes one id at a time and ships it under
``asyncio.timeout``; the outcome is written back with a compare-and-set transition, so whatever
reached the store first (a cancel, say) wins over a late finisher.

Every exit of a shipment ends in one store write:
    shipped                       → ship
    shipper raised                → fail, reason = the error
    took longer than timeout_s    → fail, reason "timeout"
    cancelled by a user           → nothing (the cancel was written first; the task is cancelled)
    cut off by shutdown           → release (back to pending), reason saying why
Final writes are shielded so a cancellation cannot lose them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from datetime import timedelta

from orderflow.clock import Clock
from orderflow.domain import Event, OrderStatus
from orderflow.errors import OrderflowError, ShuttingDown
from orderflow.shipping import Shipper
from orderflow.store.base import OrderStore

log = logging.getLogger("orderflow.processor")

_MICROSECOND = timedelta(microseconds=1)


class Processor:
    """Ships orders with at most `concurrency` shipments in flight.

    Args:
        concurrency: number of workers, so the most shipments in flight at once.
        timeout_s: how long one shipment may take before the order fails with "timeout".
        claim_batch: orders claimed per store call; between batches the loop serves others.
    """

    def __init__(
        self,
        store: OrderStore,
        shipper: Shipper,
        clock: Clock,
        *,
        concurrency: int = 64,
        timeout_s: float = 30.0,
        claim_batch: int = 5000,
    ) -> None:
        if concurrency < 1 or timeout_s <= 0 or claim_batch < 1:
            raise ValueError("concurrency and claim_batch must be >= 1, timeout_s > 0")
        self._store = store
        self._shipper = shipper
        self._clock = clock
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._claim_batch = claim_batch
        # A deque, not an asyncio.Queue: a trigger hands over a whole batch in O(1) per batch.
        self._ready: collections.deque[str] = collections.deque()
        self._ready_event = asyncio.Event()
        self._workers: set[asyncio.Task[None]] = set()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._aborted: set[str] = set()
        self._claim_wanted = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._claiming = asyncio.Lock()
        self._accepting = False
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def queued(self) -> int:
        return len(self._ready)

    async def start(self) -> None:
        """Start the workers; call once, from the loop that will run them."""
        self._accepting = True
        for n in range(self._concurrency):
            self._workers.add(asyncio.create_task(self._work(), name=f"orderflow-worker-{n}"))
        self._claimer = asyncio.create_task(self._claim_when_woken(), name="orderflow-claimer")

    async def trigger(self) -> int:
        """Claim every order pending now and queue it; returns how many were claimed.

        Raises:
            ShuttingDown: the processor is stopping (or never started).
        """
        if not self._accepting:
            raise ShuttingDown()
        return await self._claim_all()

    def wake(self) -> None:
        """Ask for pending orders to be claimed soon (auto-process); returns at once."""
        if self._accepting:
            self._claim_wanted.set()

    def abort(self, order_id: str) -> bool:
        """Cancel the shipment of `order_id` if it is in flight; True if it was.

        Call only after the order was moved to cancelled in the store.
        """
        task = self._inflight.get(order_id)
        if task is None:
            return False
        self._aborted.add(order_id)
        task.cancel(f"order {order_id} cancelled")
        return True

    async def stop(self, grace_s: float) -> None:
        """Stop taking work, let shipments in flight finish for up to `grace_s` seconds, then
        cancel the rest; every order not finished goes back to pending, with the reason."""
        self._accepting = False
        if self._claimer is not None:
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)
        async with self._claiming:  # let a trigger in progress finish its batch
            self._stopping = True
        queued = list(self._ready)
        self._ready.clear()
        self._ready_event.set()  # idle workers wake up and leave
        await self._release(queued, "shutdown: not started")
        if not self._workers:
            return
        _, late = await asyncio.wait(self._workers, timeout=grace_s)
        if late:
            log.warning("shutdown grace of %.1fs over: cancelling %d shipments", grace_s, len(late))
            for task in late:
                task.cancel("shutdown")
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def _claim_when_woken(self) -> None:
        while True:
            await self._claim_wanted.wait()
            self._claim_wanted.clear()
            try:
                await self._claim_all()
            except OrderflowError:
                log.exception("auto-process claim failed; will retry on the next order")

    async def _claim_all(self) -> int:
        total = 0
        async with self._claiming:
            # Only what is pending now: orders that arrive meanwhile wait for the next trigger.
            created_before = self._clock.now() + _MICROSECOND
            while not self._stopping:
                ids = await self._store.claim_pending(
                    self._clock.now(), self._claim_batch, created_before
                )
                self._ready.extend(ids)
                self._ready_event.set()
                total += len(ids)
                if len(ids) < self._claim_batch:
                    break
                await asyncio.sleep(0)  # one batch at a time: other requests go in between
        if total:
            log.info("claimed %d orders for shipping", total)
        return total

    async def _next(self) -> str | None:
        while not self._ready and not self._stopping:
            self._ready_event.clear()
            await self._ready_event.wait()
        return None if self._stopping else self._ready.popleft()

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while (order_id := await self._next()) is not None:
            try:
                await self._process(order_id, task)
            except OrderflowError:
                log.exception("order_id=%s shipment could not be recorded", order_id)

    async def _process(self, order_id: str, task: asyncio.Task[None]) -> None:
        order = await self._store.find_order(order_id)
        if order is None or order.status is not OrderStatus.PROCESSING:
            return  # cancelled or deleted while queued
        self._inflight[order_id] = task
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._shipper.ship(order)
            event, reason = Event.SHIP, None
        except TimeoutError:
            event, reason = Event.FAIL, "timeout"
        except asyncio.CancelledError:
            del self._inflight[order_id]
            if order_id in self._aborted:
                self._aborted.discard(order_id)
                if task.uncancel() == 0:
                    log.info("order_id=%s shipment cancelled", order_id)
                    return
            else:
                await asyncio.shield(
                    self._finish(order_id, Event.RELEASE, "shutdown: shipment interrupted")
                )
            raise
        except Exception as exc:
            event, reason = Event.FAIL, str(exc) or type(exc).__name__
        del self._inflight[order_id]
        if order_id in self._aborted:  # the shipper swallowed our cancellation
            self._aborted.discard(order_id)
            task.uncancel()
        await asyncio.shield(self._finish(order_id, event, reason))

    async def _finish(self, order_id: str, event: Event, reason: str | None) -> None:
        try:
            order = await self._store.transition(order_id, event, self._clock.now(), reason)
        except OrderflowError as exc:  # cancelled or deleted meanwhile: the store decided
            log.info("order_id=%s outcome %s dropped: %s", order_id, event.value, exc)
            return
        if reason is None:
            log.info("order_id=%s %s", order_id, order.status.value)
        else:
            log.info("order_id=%s %s reason=%r", order_id, order.status.value, reason)

    async def _release(self, order_ids: list[str], reason: str) -> None:
        for n, order_id in enumerate(order_ids, 1):
            await self._finish(order_id, Event.RELEASE, reason)
            if n % 1000 == 0:
                await asyncio.sleep(0)
