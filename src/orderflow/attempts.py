"""Attempts: one order's shipment under the retry policy. Each attempt runs under its deadline;
a PermanentFailure fails the order at once; any other failure is noted in the order's history
and tried again after a backoff (or the receiver's Retry-After, if longer), up to the last
attempt, whose failure fails the order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from orderflow.clock import Clock
from orderflow.domain import Event, Order
from orderflow.metrics import METRICS, failure_class
from orderflow.shipping import PermanentFailure, RetryableFailure, ShipContext, Shipper
from orderflow.supervise import Backoff

log = logging.getLogger("orderflow.processor")


class Dropped(Exception):
    """The order was cancelled or taken away while it waited for its next attempt."""


class Attempts:
    """Args:
    timeout_s: how long one attempt may take before it fails with "timeout".
    max_attempts: attempts per hold before the order fails.
    max_retry_after_s: the longest a shipper's Retry-After is honoured.
    """

    def __init__(
        self,
        shipper: Shipper,
        clock: Clock,
        *,
        timeout_s: float,
        max_attempts: int,
        backoff: Backoff,
        max_retry_after_s: float,
    ) -> None:
        self._shipper = shipper
        self._clock = clock
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_retry_after_s = max_retry_after_s

    async def ship(
        self, order: Order, note_retry: Callable[[str, str], Awaitable[None]]
    ) -> tuple[Event, str | None, dict[str, Any] | None]:
        """(ship or fail, the reason, the shipment's result). Before each retry,
        `note_retry(order_id, note)` writes why (it raises Dropped if the order is gone)."""
        order_log = logging.LoggerAdapter(log, {"order_id": order.id})
        attempt = 1
        while True:
            deadline = self._clock.now() + timedelta(seconds=self._timeout_s)
            context = ShipContext(attempt, deadline, order_log)
            retry_after_s: float | None = None
            began = time.perf_counter()
            try:
                async with asyncio.timeout(self._timeout_s) as limit:
                    result = await self._shipper.ship(order, context)
                METRICS.shipment_seconds.observe(time.perf_counter() - began)
                return Event.SHIP, None, result
            except PermanentFailure as exc:
                METRICS.failures["permanent"] += 1
                return Event.FAIL, str(exc) or type(exc).__name__, None
            except TimeoutError as exc:  # ours (the deadline), or the shipper's own
                failure = "timeout" if limit.expired() else (str(exc) or "TimeoutError")
            except RetryableFailure as exc:
                failure, retry_after_s = str(exc) or type(exc).__name__, exc.retry_after_s
            except Exception as exc:
                failure = str(exc) or type(exc).__name__
            METRICS.shipment_seconds.observe(time.perf_counter() - began)
            if attempt >= self._max_attempts:
                METRICS.failures[failure_class(failure, permanent=False)] += 1
                return Event.FAIL, failure, None
            METRICS.reattempts += 1
            delay_s = self._backoff.delay_s(attempt)
            if retry_after_s is not None:
                delay_s = max(delay_s, min(retry_after_s, self._max_retry_after_s))
            note = (
                f"attempt {attempt} of {self._max_attempts} failed ({failure});"
                f" retrying in {delay_s:.2f}s"
            )
            await note_retry(order.id, note)
            log.debug("order_id=%s %s", order.id, note)
            await asyncio.sleep(delay_s)
            attempt += 1
