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
from orderflow.deadline import Deadline
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

# A taken attempt is cut off this long after the time its shipper had for its result, so that a
# shipper that bounds its own wait by it (the HTTP shipper does) ends first, saying why itself.
_CUT_OFF_GRACE_S = 1.0


def _ignore(order_id: str) -> None:
    return None


class Dropped(Exception):
    """The order was cancelled or taken away while it waited for its next attempt."""


class _Take:
    """Whether, and when, the shipper of one attempt said its order was taken; `mark` is the
    attempt's `ShipContext.mark_taken`."""

    __slots__ = ("_loop", "_note_taken", "_order_id", "_wait_s", "live", "taken_at")

    def __init__(self, order_id: str, note_taken: Callable[[str], None], wait_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._order_id = order_id
        self._note_taken = note_taken
        self._wait_s = wait_s
        self.live = True  # a take after the attempt ended changes nothing
        self.taken_at: float | None = None  # the loop's time

    def mark(self) -> None:
        if self.taken_at is None and self.live:
            self.taken_at = self._loop.time()
            self._note_taken(self._order_id)

    def cut_off(self) -> float | None:
        """Asked when the attempt's deadline falls due: None (not taken: the attempt times out),
        or when to cut it off instead: no sooner than `wait_s` after the take."""
        if self.taken_at is None:
            return None
        return max(self.taken_at + self._wait_s, self._loop.time()) + _CUT_OFF_GRACE_S


class Attempts:
    """Args:
    timeout_s: how long one attempt may take before it fails with "timeout" (unless the order
        was taken before: then it ships).
    max_attempts: attempts per hold before the order fails.
    max_retry_after_s: the longest a shipper's Retry-After is honoured.
    result_wait_s: once the order is taken, the least time the shipper still has for its
        result (and never less than the attempt's deadline); a second later it is cut off.
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
        self._result_wait_s = result_wait_s

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
        loop = asyncio.get_running_loop()
        attempt = 1
        while True:
            at = self._clock.now() + timedelta(seconds=self._timeout_s)
            take = _Take(order.id, note_taken, self._result_wait_s)
            context = ShipContext(attempt, at, order_log, take.mark)
            retry_after_s: float | None = None
            permanent = False
            began = time.perf_counter()
            # Not asyncio.timeout: a take lifts this deadline, and moving a timer costs 3 µs.
            deadline = Deadline(loop.time() + self._timeout_s, take.cut_off)
            try:
                result = await self._shipper.ship(order, context)
            except asyncio.CancelledError:
                if not deadline.end():  # a user's cancel, or shutdown
                    raise
                failure = "cut off waiting for its result" if deadline.extended else "timeout"
            except PermanentFailure as exc:
                failure, permanent = str(exc) or type(exc).__name__, True
            except TimeoutError as exc:  # the shipper's own: ours is a CancelledError
                failure = "timeout" if deadline.end() else (str(exc) or "TimeoutError")
            except RetryableFailure as exc:
                failure, retry_after_s = str(exc) or type(exc).__name__, exc.retry_after_s
            except Exception as exc:
                failure = str(exc) or type(exc).__name__
            else:
                METRICS.shipment_seconds.observe(time.perf_counter() - began)
                return Event.SHIP, None, result
            finally:
                deadline.end()
                take.live = False
            METRICS.shipment_seconds.observe(time.perf_counter() - began)
            if take.taken_at is not None:  # a retry would ship it twice
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
