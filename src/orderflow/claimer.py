"""Claimer: moves pending orders to processing (ready to be acquired), on a trigger or, with
auto-process, soon after each order arrives.

A trigger claims what is pending at that moment (the orders created before it), in slices
(atomic per slice, yielding to the event loop in between, so that other requests go in between:
a slice takes a millisecond or two). It answers once every slice is done, or after
`ANSWER_WITHIN_S` (a million pending orders take longer): then the rest is claimed in the
background, and the answer counts them too. A claim that meets an outage goes on after it,
until every order of the trigger is claimed (or was cancelled or deleted meanwhile). Triggers
of several processes may overlap, and each order is still claimed once (the store's claim is a
compare-and-set from pending).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from orderflow.clock import Clock
from orderflow.domain import OrderStatus
from orderflow.errors import OutcomeUnknown, ShuttingDown, StoreUnavailable
from orderflow.store.base import OrderStore
from orderflow.supervise import OutageLog, supervised

log = logging.getLogger("orderflow.claimer")

_MICROSECOND = timedelta(microseconds=1)
#: A trigger claims for this long before it answers; what is left is claimed after.
ANSWER_WITHIN_S = 0.2


class Claimer:
    """Args:
    on_claimed: called after each slice that claimed something (wakes the processor).
    batch: orders claimed per store call (a slice); between slices the loop serves others.
    auto_process: claim soon after each `claim_soon` (and every `poll_interval_s`, so that what
        came in during an outage is claimed after it), not only on a trigger.
    poll_interval_s: how soon a claim that met an outage tries again.
    answer_within_s: how long a trigger claims before it answers.
    """

    def __init__(
        self,
        store: OrderStore,
        clock: Clock,
        on_claimed: Callable[[], None],
        *,
        batch: int = 1000,
        auto_process: bool = False,
        poll_interval_s: float = 1.0,
        answer_within_s: float = ANSWER_WITHIN_S,
    ) -> None:
        if batch < 1:
            raise ValueError("the claim batch must be at least 1")
        self._store = store
        self._clock = clock
        self._on_claimed = on_claimed
        self._batch = batch
        self._auto_process = auto_process
        self._poll_interval_s = poll_interval_s
        self._answer_within_s = answer_within_s
        self._until: datetime | None = None  # claim what was created before this (a trigger's)
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._accepting = False
        self._task: asyncio.Task[None] | None = None
        self.claimed = 0  # orders this claimer moved to processing, since it started

    def start(self) -> None:
        """Take triggers from now on (and, with auto-process, claim by itself)."""
        self._accepting = True
        self._task = asyncio.create_task(
            supervised(
                self._claim,
                every_s=self._poll_interval_s,
                log=OutageLog(log, "claiming pending orders"),
                wake=self._wanted,
            ),
            name="orderflow-claimer",
        )

    async def stop(self) -> None:
        """Take no more triggers; a slice under way finishes first. What was not claimed yet
        stays pending."""
        self._accepting = False
        async with self._lock:
            pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def auto_process(self) -> bool:
        """Whether this claimer claims by itself (else only on a trigger)."""
        return self._auto_process

    def claim_soon(self) -> None:
        """Claim pending orders soon (auto-process); returns at once."""
        if self._auto_process:
            self._wanted.set()

    async def trigger(self) -> int:
        """Claim every order pending now; returns how many: claimed already, or (when that
        takes longer than `answer_within_s`) claimed or still to be claimed, after.

        Raises:
            ShuttingDown: the claimer is stopping (or never started).
            StoreUnavailable: the store failed before anything was claimed.
            OutcomeUnknown: the store failed after some slices (the message says how many);
                the rest is claimed once the store is back.
        """
        if not self._accepting:
            raise ShuttingDown()
        # Only what is pending now: orders that arrive meanwhile wait for the next trigger.
        until = self._clock.now() + _MICROSECOND
        async with self._lock:  # (so that a stop waits for the slice under way)
            return await self._slices(until)

    async def _slices(self, until: datetime) -> int:
        loop = asyncio.get_running_loop()
        began, claimed = loop.time(), 0
        try:
            while self._accepting:
                count = await self._store.claim_pending(self._clock.now(), self._batch, until)
                claimed += count
                if count:
                    self._on_claimed()
                if count < self._batch:
                    self.claimed += claimed
                    return claimed  # every one: the usual case
                if loop.time() - began >= self._answer_within_s:
                    break
                await asyncio.sleep(0)  # one slice at a time: other requests go in between
        except StoreUnavailable as exc:
            self.claimed += claimed
            if claimed == 0 and not isinstance(exc, OutcomeUnknown):
                raise  # nothing happened
            self._after(until)
            raise OutcomeUnknown(
                f"{claimed} orders were claimed, then: {exc}; the rest will be once the store"
                " is back"
            ) from exc
        self.claimed += claimed
        if not self._accepting:
            return claimed  # ended by a stop: the rest stays pending
        self._after(until)
        return claimed + (await self._store.count_by_status())[OrderStatus.PENDING]

    def _after(self, until: datetime) -> None:
        """Claim what was created before `until` in the background."""
        if self._until is None or until > self._until:
            self._until = until
        self._wanted.set()

    async def _claim(self) -> None:
        """Claim, slice by slice, what the last trigger asked for (with auto-process, whatever
        is pending), until a slice comes back short."""
        until = self._until
        if self._auto_process:
            until = self._clock.now() + _MICROSECOND
        if until is None:
            return
        claimed = 0
        while self._accepting:
            count = await self._store.claim_pending(self._clock.now(), self._batch, until)
            claimed += count
            if count:
                self._on_claimed()
            if count < self._batch:
                break
            await asyncio.sleep(0)  # one slice at a time: other requests go in between
        if self._until is not None and self._until <= until:
            self._until = None  # (a later trigger keeps its own)
        self.claimed += claimed
        if claimed:
            log.debug("claimed %d orders for shipping", claimed)
