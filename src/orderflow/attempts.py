"""Attempts: one order's shipment under the retry policy. Each attempt runs under its deadline;
a PermanentFailure fails the order at once; any other failure is noted in the order's history
and tried again after a backoff (or the receiver's Retry-After, if longer), up to the last
attempt, whose failure fails the order. An attempt whose order the shipper says was taken
(`ShipContext.mark_taken`) ships, whatever happens after: a retry would ship it twice."""

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
from orderflow.shipping import (
    RESULT_WAIT_S,
    PermanentFailure,
    RetryableFailure,
    ShipContext,
    Shipper,
)
from orderflow.supervise import Backoff

log = logging.getLogger("orderflow.processor")


# A taken attempt is cut off this long after its shipper's own `result_wait_s`, so that a
# shipper that bounds its wait by it (the HTTP shipper does) ends first, saying why itself.
_CUT_OFF_GRACE_S = 1.0


def _ignore(order_id: str) -> None:
    return None


class Dropped(Exception):
    """The order was cancelled or taken away while it waited for its next attempt."""


class _Deadline:
    """One attempt's deadline (`asyncio.timeout` underneath). Once the order is taken
    (`ShipContext.mark_taken`), it no longer fails the attempt: it moves to `cut_off_s` from
    then, and only bounds the wait for the shipper's result."""

    __slots__ = ("_cut_off_s", "_live", "_note_taken", "_order_id", "limit", "moved", "taken")

    def __init__(
        self,
        timeout_s: float,
        cut_off_s: float,
        order_id: str,
        note_taken: Callable[[str], None],
    ) -> None:
        self.limit = asyncio.timeout(timeout_s)
        self.taken = self.moved = False
        self._live = True
        self._cut_off_s = cut_off_s
        self._order_id = order_id
        self._note_taken = note_taken

    def mark_taken(self) -> None:
        if self.taken or not self._live:
            return
        self.taken = True
        self._note_taken(self._order_id)
        # Expired already (its cancel is on the way, in this very loop turn): the attempt still
        # ships, as it is taken; otherwise no loop turn separates the take from the move.
        if not self.limit.expired():
            self.limit.reschedule(asyncio.get_running_loop().time() + self._cut_off_s)
            self.moved = True

    def end(self) -> None:
        self._live = False


class Attempts:
    """Args:
    timeout_s: how long one attempt may take before it fails with "timeout" (unless the order
        was taken before: then it ships).
    max_attempts: attempts per hold before the order fails.
    max_retry_after_s: the longest a shipper's Retry-After is honoured.
    result_wait_s: once the order is taken, how long more the shipper has for its result; it
        is cut off a second after that.
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
        result_wait_s: float = RESULT_WAIT_S,
    ) -> None:
        self._shipper = shipper
        self._clock = clock
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_retry_after_s = max_retry_after_s
        self._cut_off_s = result_wait_s + _CUT_OFF_GRACE_S

    async def ship(
        self,
        order: Order,
        note_retry: Callable[[str, str], Awaitable[None]],
        note_taken: Callable[[str], None] = _ignore,
    ) -> tuple[Event, str | None, dict[str, Any] | None]:
        """(ship or fail, the reason, the shipment's result). Before each retry,
        `note_retry(order_id, note)` writes why (it raises Dropped if the order is gone);
        `note_taken(order_id)` is called when the shipper says the order is taken, so that a
        shipment cut off after that (at shutdown) is known to be shipped."""
        order_log = logging.LoggerAdapter(log, {"order_id": order.id})
        attempt = 1
        while True:
            at = self._clock.now() + timedelta(seconds=self._timeout_s)
            deadline = _Deadline(self._timeout_s, self._cut_off_s, order.id, note_taken)
            context = ShipContext(attempt, at, order_log, deadline.mark_taken)
            began = time.perf_counter()
            try:
                async with deadline.limit:
                    result = await self._shipper.ship(order, context)
            except Exception as exc:
                failure, retry_after_s, permanent = self._failure(exc, deadline)
            else:
                METRICS.shipment_seconds.observe(time.perf_counter() - began)
                return Event.SHIP, None, result
            finally:
                deadline.end()
            METRICS.shipment_seconds.observe(time.perf_counter() - began)
            if deadline.taken:  # a retry would ship it twice
                order_log.warning(
                    "the order was taken, then its shipment failed (%s): shipped, no result stored",
                    failure,
                )
                return Event.SHIP, None, None
            if permanent:
                METRICS.failures["permanent"] += 1
                return Event.FAIL, failure, None
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

    def _failure(self, exc: Exception, deadline: _Deadline) -> tuple[str, float | None, bool]:
        """(the reason, the Retry-After, whether permanent) of a failed attempt."""
        if isinstance(exc, PermanentFailure):
            return str(exc) or type(exc).__name__, None, True
        if isinstance(exc, TimeoutError):  # ours (the deadline), or the shipper's own
            if not deadline.limit.expired():
                return str(exc) or "TimeoutError", None, False
            if deadline.moved:
                return f"no result within {self._cut_off_s:g}s", None, False
            return "timeout", None, False
        if isinstance(exc, RetryableFailure):
            return str(exc) or type(exc).__name__, exc.retry_after_s, False
        return str(exc) or type(exc).__name__, None, False
