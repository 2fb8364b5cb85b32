"""Claimer: moves pending orders to processing (ready to be acquired), on a trigger or, with
auto-process, soon after each order arrives.

A trigger claims what is pending at that moment, in batches (atomic per batch, yielding to the
event loop in between), so a million pending orders never block other requests for long.
Triggers of one process run one at a time; triggers of several processes may overlap, and each
order is still claimed once (the store's claim is a compare-and-set from pending).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from orderflow.clock import Clock
from orderflow.errors import OutcomeUnknown, ShuttingDown
from orderflow.store.base import OrderStore
from orderflow.supervise import OutageLog, supervised

log = logging.getLogger("orderflow.claimer")

_MICROSECOND = timedelta(microseconds=1)


class Claimer:
    """Args:
    on_claimed: called after each batch that claimed something (wakes the processor).
    batch: orders claimed per store call; between batches the loop serves others.
    auto_process: claim soon after each `claim_soon` (and every `poll_interval_s`, so that what
        came in during an outage is claimed after it), not only on a trigger.
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
    ) -> None:
        if batch < 1:
            raise ValueError("the claim batch must be at least 1")
        self._store = store
        self._clock = clock
        self._on_claimed = on_claimed
        self._batch = batch
        self._auto_process = auto_process
        self._poll_interval_s = poll_interval_s
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()
        self._accepting = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Take triggers from now on (and, with auto-process, claim by itself)."""
        self._accepting = True
        if self._auto_process:
            self._task = asyncio.create_task(
                supervised(
                    self.trigger,
                    every_s=self._poll_interval_s,
                    log=OutageLog(log, "auto-process claim"),
                    wake=self._wanted,
                ),
                name="orderflow-claimer",
            )

    async def stop(self) -> None:
        """Take no more triggers; a trigger in progress finishes its batch first."""
        self._accepting = False
        async with self._lock:
            pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def claim_soon(self) -> None:
        """Claim pending orders soon (auto-process); returns at once."""
        if self._task is not None:
            self._wanted.set()

    async def trigger(self) -> int:
        """Claim every order pending now; returns how many were claimed.

        Raises:
            ShuttingDown: the processor is stopping (or never started).
            StoreUnavailable: the store failed before the first batch.
            OutcomeUnknown: the store failed after some batches (the message says how many);
                what was claimed ships, a new trigger claims the rest.
        """
        if not self._accepting:
            raise ShuttingDown()
        total = 0
        async with self._lock:
            # Only what is pending now: orders that arrive meanwhile wait for the next trigger.
            created_before = self._clock.now() + _MICROSECOND
            while self._accepting:
                try:
                    count = await self._store.claim_pending(
                        self._clock.now(), self._batch, created_before
                    )
                except OutcomeUnknown as exc:
                    raise OutcomeUnknown(f"{total} orders were claimed, then: {exc}") from exc
                total += count
                if count:
                    self._on_claimed()
                if count < self._batch:
                    break
                await asyncio.sleep(0)  # one batch at a time: other requests go in between
        if total:
            log.debug("claimed %d orders for shipping", total)
        return total
