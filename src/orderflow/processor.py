"""Processor: a fixed pool of asyncio workers that ship claimed orders, each under a timeout.

A trigger claims pending orders in the store in batches (pending → processing, atomic per
batch): they are then ready for any processor sharing the store. A fetcher task acquires ready
orders for this processor (at most two per worker: one shipping, one next) and each worker
ships one at a time under ``asyncio.timeout``. The outcome is written back with an
owner-checked compare-and-set transition, so whatever reached the store first (a cancel, say)
wins over a late finisher.

Every exit of a shipment ends in one store write:
    shipped                       → ship
    shipper raised                → fail, reason = the error
    took longer than timeout_s    → fail, reason "timeout"
    (either, attempts left)       → retry (a history entry), back off, try again
    cancelled by a user           → nothing (the cancel was written first; the task is cancelled)
    cut off by shutdown           → release (back to pending), reason saying why; with a
                                    shared store, handback (ready for the other processes)
A final write cannot be lost to a cancellation: only a shipment in flight is ever cancelled
(by a user's cancel, or by shutdown when the grace is over), never a worker writing an outcome.

With a store shared by several processes, a heartbeat task keeps this processor's hold on its
orders alive (`lease_s`), hands orders whose holder died back to be acquired again, and the
store's notifications wake the fetcher and cancel shipments cancelled elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import socket
from datetime import timedelta

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)

from orderflow.clock import Clock
from orderflow.domain import Event, Order
from orderflow.errors import OrderflowError, ShuttingDown
from orderflow.outcomes import OutcomeWriter
from orderflow.shipping import Shipper
from orderflow.store.base import OrderStore

log = logging.getLogger("orderflow.processor")

_MICROSECOND = timedelta(microseconds=1)
_MAX_BACKOFF_S = 30.0

Outcome = tuple[Event, str | None]  # (ship or fail, reason)


class _Dropped(Exception):
    """The order was cancelled or taken back while we were retrying it."""


def new_owner_id() -> str:
    """A name for this processor, unique across hosts and restarts (host, pid, random)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Processor:
    """Ships orders with at most `concurrency` shipments in flight.

    Args:
        owner: the name this processor holds orders under; unique per running processor.
        concurrency: number of workers, so the most shipments in flight at once.
        timeout_s: how long one shipment may take before the order fails with "timeout".
        claim_batch: orders claimed per store call; between batches the loop serves others.
        poll_interval_s: how often to look for ready orders when nobody said there are some.
        max_attempts: attempts per order before it fails (1: no retry).
        retry_backoff_s: the first wait before a retry; it doubles each time (at most 30 s),
            plus up to as much again of random jitter.
        heartbeat_s: how often to tell the store this processor is alive.
        lease_s: how long the store keeps our orders for us without a heartbeat.
    """

    def __init__(
        self,
        store: OrderStore,
        shipper: Shipper,
        clock: Clock,
        *,
        owner: str | None = None,
        concurrency: int = 64,
        timeout_s: float = 30.0,
        claim_batch: int = 1000,
        poll_interval_s: float = 1.0,
        max_attempts: int = 1,
        retry_backoff_s: float = 0.5,
        heartbeat_s: float = 2.0,
        lease_s: float = 15.0,
    ) -> None:
        if min(concurrency, claim_batch, max_attempts) < 1:
            raise ValueError("concurrency, claim_batch and max_attempts must be >= 1")
        if min(timeout_s, poll_interval_s, heartbeat_s) <= 0 or retry_backoff_s < 0:
            raise ValueError("timeouts and intervals must be > 0, the backoff >= 0")
        if lease_s < 3 * heartbeat_s:
            raise ValueError("lease_s must be at least three heartbeats long")
        self.owner = owner or new_owner_id()
        self._store = store
        # What an unfinished order becomes when we let go of it: pending here, or ready again
        # for the other processes sharing the store.
        self._give_back = Event.HANDBACK if store.shared else Event.RELEASE
        self._shipper = shipper
        self._clock = clock
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._claim_batch = claim_batch
        self._poll_interval_s = poll_interval_s
        self._max_attempts = max_attempts
        self._heartbeat_s = heartbeat_s
        self._lease_s = lease_s
        self._backoff = wait_exponential_jitter(
            multiplier=retry_backoff_s, max=_MAX_BACKOFF_S, jitter=retry_backoff_s
        )
        self._held: collections.deque[Order] = collections.deque()  # acquired, not started
        self._held_event = asyncio.Event()
        self._fetch_wanted = asyncio.Event()
        self._claim_wanted = asyncio.Event()
        self._claiming = asyncio.Lock()
        self._workers: set[asyncio.Task[None]] = set()
        self._helpers: set[asyncio.Task[None]] = set()  # the fetcher and the claimer
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._aborted: set[str] = set()
        self._accepting = False
        self._stopping = False
        self._outcomes = OutcomeWriter(store, self.owner, lambda: self._stopping)
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def held(self) -> int:
        return len(self._held)

    async def start(self) -> None:
        """Start the workers; call once, from the loop that will run them."""
        await self._store.heartbeat(self.owner, self._lease_s)
        await self._store.subscribe(self.wake, self.abort)
        self._accepting = True
        self._outcomes.start()
        for n in range(self._concurrency):
            self._workers.add(asyncio.create_task(self._work(), name=f"orderflow-worker-{n}"))
        self._helpers.add(asyncio.create_task(self._fetch_loop(), name="orderflow-fetcher"))
        self._helpers.add(asyncio.create_task(self._claim_loop(), name="orderflow-claimer"))
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="orderflow-heartbeat")

    async def trigger(self) -> int:
        """Claim every order pending now for shipping; returns how many were claimed.

        Raises:
            ShuttingDown: the processor is stopping (or never started).
        """
        if not self._accepting:
            raise ShuttingDown()
        return await self._claim_all()

    def wake(self) -> None:
        """Look for ready orders now (another processor may have claimed some)."""
        self._fetch_wanted.set()

    def claim_soon(self) -> None:
        """Claim pending orders soon (auto-process); returns at once."""
        if self._accepting:
            self._claim_wanted.set()

    def abort(self, order_id: str) -> bool:
        """Cancel the shipment of `order_id` if this processor holds it; True if it did.

        Call only after the order was moved to cancelled in the store.
        """
        if order_id in self._aborted:  # told twice (locally and by a notification): once is enough
            return True
        task = self._inflight.get(order_id)
        if task is not None:
            self._aborted.add(order_id)
            task.cancel(f"order {order_id} cancelled")
            return True
        if any(order.id == order_id for order in self._held):
            self._aborted.add(order_id)  # the worker that takes it will drop it
            return True
        return False

    async def stop(self, grace_s: float) -> None:
        """Stop taking work, let shipments in flight finish for up to `grace_s` seconds, then
        cancel the rest; every order held and not finished goes back to pending (with a shared
        store: ready for the other processes), with why. Heartbeats go on until the end, so no
        lease runs out while we still ship."""
        self._accepting = False
        async with self._claiming:  # let a trigger in progress finish its batch
            self._stopping = True
        for task in self._helpers:
            task.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self._helpers.clear()
        if not self._store.shared:  # shared, they stay ready for the other processes
            try:
                await self._store.release_unshared(self._clock.now(), "shutdown: not started")
            except OrderflowError:
                log.exception("could not put back the orders claimed and not started")
        held = [order.id for order in self._held]
        self._held.clear()
        self._held_event.set()  # idle workers wake up and leave
        await asyncio.gather(
            *(self._finish(order_id, self._give_back, "shutdown: not started") for order_id in held)
        )
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=grace_s)
            if late:
                log.warning("shutdown grace of %.1fs over: cancelling shipments", grace_s)
                # Only shipments: a worker writing its outcome finishes it, then leaves.
                for task in set(self._inflight.values()):
                    task.cancel("shutdown")
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers.clear()
        await self._outcomes.close()  # every worker is done: nothing more to write
        if self._heartbeat is not None:  # nor anything to keep alive
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        try:
            await self._store.retire(self.owner, self._clock.now())
        except OrderflowError:
            log.warning("could not retire %s; its lease will run out instead", self.owner)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._store.heartbeat(self.owner, self._lease_s)
                if await self._store.rescue_orphans(self._clock.now()):
                    self.wake()
            except OrderflowError:
                log.warning("heartbeat failed; retrying in %.1fs", self._heartbeat_s)
            except Exception:  # a bug must not stop the heartbeats
                log.exception("heartbeat failed; retrying in %.1fs", self._heartbeat_s)

    async def _claim_loop(self) -> None:
        while True:
            await self._claim_wanted.wait()
            self._claim_wanted.clear()
            try:
                await self._claim_all()
            except Exception:  # the claimer must outlive a failed claim
                log.exception("auto-process claim failed; will retry on the next order")

    async def _claim_all(self) -> int:
        total = 0
        async with self._claiming:
            # Only what is pending now: orders that arrive meanwhile wait for the next trigger.
            created_before = self._clock.now() + _MICROSECOND
            while not self._stopping:
                count = await self._store.claim_pending(
                    self._clock.now(), self._claim_batch, created_before
                )
                total += count
                self._fetch_wanted.set()
                if count < self._claim_batch:
                    break
                await asyncio.sleep(0)  # one batch at a time: other requests go in between
        if total:
            log.info("claimed %d orders for shipping", total)
        return total

    async def _fetch_loop(self) -> None:
        while True:
            self._fetch_wanted.clear()
            room = 2 * self._concurrency - len(self._held) - len(self._inflight)
            # Fetch in batches: not for every worker that frees up, but once half can be filled.
            if room >= max(1, self._concurrency // 2) or (room > 0 and not self._held):
                try:
                    orders = await self._store.acquire(self.owner, room)
                except Exception:  # the fetcher must outlive a failed fetch
                    log.exception("could not acquire orders; retrying after the poll interval")
                    orders = []
                if orders:
                    self._held.extend(orders)
                    self._held_event.set()
                if len(orders) == room:
                    continue  # there may be more
            if not self._fetch_wanted.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval_s):
                        await self._fetch_wanted.wait()

    async def _next(self) -> Order | None:
        while not self._held and not self._stopping:
            self._held_event.clear()
            await self._held_event.wait()
        return None if self._stopping else self._held.popleft()

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while (order := await self._next()) is not None:
            if order.id in self._aborted:  # cancelled while held
                self._aborted.discard(order.id)
                continue
            try:
                await self._process(order, task)
            except Exception:  # a bug must cost one order's attempt, never a worker
                log.exception("order_id=%s shipment abandoned", order.id)
                self._inflight.pop(order.id, None)
                try:
                    await self._finish(
                        order.id, self._give_back, "internal error: shipment abandoned"
                    )
                except Exception:  # left to rescue, or to retire at shutdown
                    log.exception("order_id=%s could not be given back", order.id)
            self._fetch_wanted.set()  # a worker is free

    async def _process(self, order: Order, task: asyncio.Task[None]) -> None:
        order_id = order.id
        self._inflight[order_id] = task
        try:
            if self._max_attempts == 1:
                event, reason = await self._attempt(order)
            else:
                event, reason = await self._attempts(order)
        except _Dropped:
            del self._inflight[order_id]
            return
        except asyncio.CancelledError:
            del self._inflight[order_id]
            if order_id in self._aborted:
                self._aborted.discard(order_id)
                if task.uncancel() == 0:
                    log.info("order_id=%s shipment cancelled", order_id)
                    return
            else:  # shutdown; nothing cancels this task twice
                await self._finish(order_id, self._give_back, "shutdown: shipment interrupted")
            raise
        del self._inflight[order_id]
        if order_id in self._aborted:  # the shipper swallowed our cancellation
            self._aborted.discard(order_id)
            task.uncancel()
        await self._finish(order_id, event, reason)

    async def _attempt(self, order: Order) -> Outcome:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._shipper.ship(order)
        except TimeoutError:
            return Event.FAIL, "timeout"
        except Exception as exc:
            return Event.FAIL, str(exc) or type(exc).__name__
        return Event.SHIP, None

    async def _attempts(self, order: Order) -> Outcome:
        async def record_retry(state: RetryCallState) -> None:
            assert state.outcome is not None
            assert state.next_action is not None
            _, failure = state.outcome.result()
            note = (
                f"attempt {state.attempt_number} of {self._max_attempts} failed ({failure});"
                f" retrying in {state.next_action.sleep:.2f}s"
            )
            try:  # waits out an outage: giving up here would leave the order held, unshipped
                await self._outcomes.write(order.id, Event.RETRY, self._clock.now(), note)
            except OrderflowError as exc:  # cancelled or taken back meanwhile
                log.info("order_id=%s retry dropped: %s", order.id, exc)
                raise _Dropped from exc
            log.info("order_id=%s %s", order.id, note)

        def last_outcome(state: RetryCallState) -> Outcome:
            assert state.outcome is not None
            outcome: Outcome = state.outcome.result()
            return outcome

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._backoff,
            retry=retry_if_result(lambda outcome: outcome[0] is Event.FAIL),
            before_sleep=record_retry,
            retry_error_callback=last_outcome,
        )
        outcome: Outcome = await retrying(self._attempt, order)
        return outcome

    async def _finish(self, order_id: str, event: Event, reason: str | None) -> None:
        try:
            order = await self._outcomes.write(order_id, event, self._clock.now(), reason)
        except OrderflowError as exc:  # cancelled or taken back meanwhile: the store decided
            log.info("order_id=%s outcome %s dropped: %s", order_id, event.value, exc)
            return
        if reason is None:
            log.info("order_id=%s %s", order_id, order.status.value)
        else:
            log.info("order_id=%s %s reason=%r", order_id, order.status.value, reason)
