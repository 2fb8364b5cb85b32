"""Processor: a fixed pool of asyncio workers that ship the orders this process holds.

A fetcher acquires ready orders from the store (at most two per worker: one shipping, one next);
each worker ships one at a time, every attempt under its deadline (attempts.py). The processor
keeps the list of what it holds, (order, token), in `holdings`: the heartbeat renews exactly those,
learns which were taken away (their shipments stop), and has the store hand back anything held
under this processor's name that it does not know of (an acquire whose answer was lost). An
order acquired again while this process still ships it (its lease ran out in an outage) is not
shipped twice here: the shipment under way carries on under the new token.

Every exit of a shipment ends in one store write, under the hold:
    shipped                       → ship, with the shipper's result
    PermanentFailure              → fail at once, reason = the error
    other error, or timeout       → reattempt (a history entry), back off, try again; the last
                                    attempt's failure → fail
    cancelled by a user           → nothing (the cancel was written first; the task is cancelled)
    taken away (rescued, acquired by another) → nothing (the store refuses our writes anyway)
    cut off by shutdown           → release (back to pending), reason saying why; with a
                                    shared store, handback (ready for the other processes);
                                    but ship, with no result, if the order was taken already
A final write cannot be lost to a cancellation: only a shipment in flight is ever cancelled,
never a worker writing an outcome.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from orderflow.attempts import Attempts
from orderflow.clock import Clock, new_owner_id
from orderflow.domain import Event, Parcel
from orderflow.errors import OrderflowError
from orderflow.metrics import METRICS
from orderflow.outcomes import OutcomeWriter
from orderflow.shipping import RESULT_WAIT_S, Shipper
from orderflow.store.base import InstanceBeat, OrderStore
from orderflow.supervise import Backoff, OutageLog, supervised

log = logging.getLogger("orderflow.processor")

#: Heartbeats an instance may miss before it is listed as not live.
MISSED_BEATS = 3


@dataclass(frozen=True)
class ProcessorSettings:
    """How the processor works; durations in seconds.

    Attributes:
        concurrency: number of workers, so the most shipments in flight at once.
        timeout_s: how long one attempt may take before it fails with "timeout".
        max_attempts: attempts per hold before the order fails (1: no retry).
        retry_backoff_s: the first wait before a retry; it doubles each time (at most
            `max_backoff_s`), plus up to as much again of random jitter.
        max_retry_after_s: the longest a shipper's Retry-After is honoured.
        result_wait_s: once the shipper says the order is taken (`ShipContext.mark_taken`), how
            long more it has for its result (or till the deadline, if later); a second after
            that it is cut off, and the order ships without one.
        outcome_window_s: on a shared store, how long finished shipments' outcomes gather
            before their write (one round trip for the batch).
        poll_interval_s: how often to look for ready orders when nobody said there are some.
        heartbeat_s: how often to renew the lease on what this processor holds, and to tell
            the store it is live (with what it holds and ships).
        lease_s: how long the store keeps our orders for us without a heartbeat.
    """

    concurrency: int = 64
    timeout_s: float = 30.0
    max_attempts: int = 1
    retry_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0
    result_wait_s: float = RESULT_WAIT_S
    outcome_window_s: float = 0.0
    poll_interval_s: float = 1.0
    heartbeat_s: float = 2.0
    lease_s: float = 15.0

    def __post_init__(self) -> None:
        if min(self.concurrency, self.max_attempts) < 1:
            raise ValueError("concurrency and max_attempts must be >= 1")
        if min(self.timeout_s, self.poll_interval_s, self.heartbeat_s) <= 0:
            raise ValueError("timeouts and intervals must be > 0")
        if self.retry_backoff_s < 0:
            raise ValueError("the retry backoff must be >= 0")
        if self.lease_s < 3 * self.heartbeat_s - 1e-9:
            raise ValueError("the lease must be at least three heartbeats long")


class Processor:
    """Ships the orders it acquires, at most `settings.concurrency` at once.

    Args:
        owner: the name this processor holds orders under; unique per running processor.
    """

    def __init__(
        self,
        store: OrderStore,
        shipper: Shipper,
        clock: Clock,
        settings: ProcessorSettings | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        self.settings = settings = settings or ProcessorSettings()
        self.owner = owner or new_owner_id()
        self._store = store
        self._shipper = shipper
        self._clock = clock
        # What an unfinished order becomes when we let go of it: pending here, or ready again
        # for the other processes sharing the store.
        self._give_back = Event.HANDBACK if store.shared else Event.RELEASE
        self._attempts = Attempts(
            shipper,
            clock,
            timeout_s=settings.timeout_s,
            max_attempts=settings.max_attempts,
            backoff=Backoff(settings.retry_backoff_s, max_s=settings.max_backoff_s),
            max_retry_after_s=settings.max_retry_after_s,
            result_wait_s=settings.result_wait_s,
        )
        self.holdings: dict[str, int] = {}  # order id → token: what this processor holds
        self._holding = asyncio.Lock()  # an acquire and a renewal never overlap
        self._queue: collections.deque[Parcel] = collections.deque()  # held, not started
        self._queued = asyncio.Event()
        self._fetch_wanted = asyncio.Event()
        self._workers: set[asyncio.Task[None]] = set()
        self._loops: set[asyncio.Task[None]] = set()  # the fetcher
        self._heartbeat: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._aborted: set[str] = set()
        self._stopping = False
        self._started_at = clock.now()
        self._outcomes = OutcomeWriter(
            store,
            self.owner,
            clock,
            self.holdings,
            lambda: self._stopping,
            window_s=settings.outcome_window_s,
        )

    @property
    def in_flight(self) -> int:
        """Shipments under way."""
        return len(self._inflight)

    @property
    def queued(self) -> int:
        """Orders held and waiting for a worker."""
        return len(self._queue)

    async def start(self) -> None:
        """Register with the store and start the workers; call once, from the loop that will
        run them."""
        self._started_at = self._clock.now()
        try:
            await self._beat(self._started_at)
        except OrderflowError as exc:  # the heartbeats register it once the store answers
            log.warning("could not register %s: %s", self.owner, exc)
        await self._store.subscribe(self.wake, self.abort)
        self._outcomes.start()
        for n in range(self.settings.concurrency):
            self._workers.add(asyncio.create_task(self._work(), name=f"orderflow-worker-{n}"))
        self._loops.add(
            asyncio.create_task(
                supervised(
                    self._fetch,
                    every_s=self.settings.poll_interval_s,
                    log=OutageLog(log, "fetching ready orders"),
                    wake=self._fetch_wanted,
                ),
                name="orderflow-fetcher",
            )
        )
        self._heartbeat = asyncio.create_task(
            supervised(
                self._renew,
                every_s=self.settings.heartbeat_s,
                log=OutageLog(log, "heartbeat"),
            ),
            name="orderflow-heartbeat",
        )

    def wake(self) -> None:
        """Look for ready orders now (a trigger, here or in another process, claimed some)."""
        self._fetch_wanted.set()

    def abort(self, order_id: str) -> bool:
        """Stop shipping `order_id` if this processor holds it (the store says it was cancelled,
        or taken away); True if it did. Call only after the store says so."""
        held = self.holdings.pop(order_id, None) is not None
        queued = [parcel for parcel in self._queue if parcel.id == order_id]
        for parcel in queued:  # a queued copy must not ship, nor be queued twice later
            self._queue.remove(parcel)
        task = self._inflight.get(order_id)
        if task is not None and order_id not in self._aborted:
            self._aborted.add(order_id)
            task.cancel(f"order {order_id} is no longer ours to ship")
        return held or bool(queued) or task is not None

    async def stop(self, grace_s: float) -> None:
        """Stop taking work, let shipments in flight finish for up to `grace_s` seconds, then
        cancel the rest; every order held and not finished goes back to pending (with a shared
        store: ready for the other processes), with why. Heartbeats go on until the end, so no
        lease runs out while we still ship."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        if not self._store.shared:  # shared, they stay ready for the other processes
            try:
                await self._store.release_unshared(self._clock.now(), "shutdown: not started")
            except OrderflowError as exc:
                log.warning("could not put back the orders claimed and not started: %s", exc)
        waiting = list(self._queue)
        self._queue.clear()
        self._queued.set()  # idle workers wake up and leave
        for parcel in waiting:
            self._give_back_later(parcel.id, "shutdown: not started")
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=grace_s)
            if late:
                log.warning("shutdown grace of %.1fs over: cancelling shipments", grace_s)
                for task in set(self._inflight.values()):
                    task.cancel("shutdown")
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers.clear()
        await self._outcomes.close()  # every worker is done: what they handed over is written
        if self._heartbeat is not None:  # nor anything to keep alive
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        try:
            if await self._store.retire(self.owner, self._clock.now()):
                log.warning("%s handed back orders it still held at the end", self.owner)
        except OrderflowError as exc:
            log.warning("could not retire %s (%s); its lease will run out instead", self.owner, exc)
        try:
            await self._store.stop_instance(self.owner, self._clock.now())
        except OrderflowError as exc:
            log.warning("could not deregister %s (%s); it will miss its heartbeats", self.owner,
                        exc)  # fmt: skip

    # -- holding -----------------------------------------------------------------------------

    async def _fetch(self) -> None:
        """Acquire ready orders while there is room (fill up at least half the workers' worth
        at once, not one order per freed worker)."""
        concurrency = self.settings.concurrency
        while not self._stopping:
            room = 2 * concurrency - len(self._queue) - len(self._inflight)
            if room < max(1, concurrency // 2) and (room <= 0 or self._queue):
                return
            async with self._holding:
                acquired = await self._store.acquire(self.owner, room, self.settings.lease_s)
                for held in acquired:
                    order_id = held.parcel.id
                    known = order_id in self.holdings
                    self.holdings[order_id] = held.token
                    if not known:
                        self._queue.append(held.parcel)
                    # Known: still queued or shipping here; that copy now goes on under the new
                    # token, and ships once.
            if acquired:
                self._queued.set()
            if len(acquired) < room:
                return

    async def _renew(self) -> None:
        store, now = self._store, self._clock.now()
        async with self._holding:
            holds = dict(self.holdings)
            lost = await store.renew(self.owner, holds, self.settings.lease_s, now)
        METRICS.renewals += 1
        for order_id in lost:
            if self.holdings.get(order_id) == holds[order_id]:  # not finished meanwhile
                log.warning("order_id=%s was taken away from %s", order_id, self.owner)
                self.abort(order_id)
        await self._beat(now)
        rescued = await store.rescue_expired(now)
        if rescued:
            METRICS.rescues += rescued
            self.wake()

    async def _beat(self, at: datetime) -> None:
        """Tell the store this instance is live, with what it holds and ships now."""
        live_s = MISSED_BEATS * self.settings.heartbeat_s
        await self._store.heartbeat(
            InstanceBeat(
                self.owner,
                self._started_at,
                at,
                len(self.holdings),
                len(self._inflight),
                at + timedelta(seconds=live_s),
            )
        )

    # -- shipping ----------------------------------------------------------------------------

    async def _next(self) -> Parcel | None:
        while not self._queue and not self._stopping:
            self._queued.clear()
            await self._queued.wait()
        return None if self._stopping else self._queue.popleft()

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        holdings, inflight, fetch_wanted = self.holdings, self._inflight, self._fetch_wanted
        while (parcel := await self._next()) is not None:
            order_id = parcel.id
            if order_id not in holdings:  # cancelled or taken away while queued
                continue
            if order_id in inflight:  # its last shipment here is still being stopped
                self._queue.append(parcel)
                await asyncio.sleep(0.01)
                continue
            try:
                await self._process(parcel, task)
            except Exception:  # a bug must cost one order's attempt, never a worker
                log.exception("order_id=%s shipment abandoned", order_id)
                inflight.pop(order_id, None)
                self._give_back_later(order_id, "internal error: abandoned")
            fetch_wanted.set()  # a worker is free

    async def _process(self, parcel: Parcel, task: asyncio.Task[None]) -> None:
        """Ship `parcel`, every attempt its hold allows, and hand its outcome to the writer."""
        order_id = parcel.id
        self._inflight[order_id] = task
        attempt = self._attempts.begin(parcel, 1, task)
        try:
            while True:
                tried = await attempt.run()
                if tried.event is not Event.REATTEMPT:
                    break
                if not await self._outcomes.write(order_id, Event.REATTEMPT, tried.reason):
                    self._inflight.pop(order_id, None)
                    return  # cancelled or taken away while it waited to be tried again
                await asyncio.sleep(tried.delay_s)
                attempt = self._attempts.begin(parcel, attempt.number + 1, task)
        except asyncio.CancelledError:
            self._inflight.pop(order_id, None)
            if order_id in self._aborted:
                self._aborted.discard(order_id)
                if task.uncancel() == 0:
                    log.debug("order_id=%s shipment stopped", order_id)
                    return
            elif attempt.taken:
                # Shutdown, but the order was taken already: handed back, it would ship twice.
                log.warning(
                    "order_id=%s cut off by shutdown after it was taken: shipped, no result stored",
                    order_id,
                )
                self._outcomes.submit(order_id, Event.SHIP)
            else:  # shutdown; nothing cancels this task twice
                self._give_back_later(order_id, "shutdown: shipment interrupted")
            raise
        self._inflight.pop(order_id, None)
        if order_id in self._aborted:  # the shipper swallowed our cancellation
            self._aborted.discard(order_id)
            task.uncancel()
            return
        self._outcomes.submit(order_id, tried.event, tried.reason, tried.shipment)

    def _give_back_later(self, order_id: str, reason: str) -> None:
        """Let go of an unfinished order (released here, or handed back for the others)."""
        METRICS.handbacks += 1
        self._outcomes.submit(order_id, self._give_back, reason)
