"""Attempts: one attempt at shipping an order, under its deadline, and what it became under
the retry policy: shipped; failed for good (a PermanentFailure, or the last attempt's failure);
or to be tried again after a backoff (or the receiver's Retry-After, if longer). An attempt
whose order the shipper says was taken (`ShipContext.mark_taken`) ships, whatever happens
after: a retry would ship it twice. The processor runs the attempts and writes what each
became; nothing here writes to the store."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any, NamedTuple

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


class Tried(NamedTuple):
    """What an attempt became: `event` is SHIP or FAIL (final, with the reason and the
    shipment's result), or REATTEMPT (`reason` notes why, for the order's history; the next
    attempt follows after `delay_s`)."""

    event: Event
    reason: str | None = None
    shipment: dict[str, Any] | None = None
    delay_s: float = 0.0


class _Take:
    """Whether, and when, the shipper of one attempt said its order was taken; `mark` is the
    attempt's `ShipContext.mark_taken`."""

    __slots__ = ("_loop", "_wait_s", "live", "taken_at")

    def __init__(self, wait_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._wait_s = wait_s
        self.live = True  # a take after the attempt ended changes nothing
        self.taken_at: float | None = None  # the loop's time

    def mark(self) -> None:
        if self.taken_at is None and self.live:
            self.taken_at = self._loop.time()

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

    def begin(self, order: Order, number: int) -> Attempt:
        """Attempt number `number` (1 for the first) at shipping `order`; run it with `run`."""
        return Attempt(self, order, number)


class Attempt:
    """One attempt: `run` it once; `taken` says whether the shipper said its order was taken
    (so that a shipment cut off after that, at shutdown, is known to be shipped)."""

    __slots__ = ("_attempts", "_order", "_take", "number")

    def __init__(self, attempts: Attempts, order: Order, number: int) -> None:
        self._attempts = attempts
        self._order = order
        self.number = number
        self._take = _Take(attempts._result_wait_s)

    @property
    def taken(self) -> bool:
        return self._take.taken_at is not None

    async def run(self) -> Tried:
        """Ship once; what it became. Raises CancelledError only for a cancel from outside (a
        user's cancel, a shutdown), never for its own deadline."""
        policy, order, take, number = self._attempts, self._order, self._take, self.number
        order_log = logging.LoggerAdapter(log, {"order_id": order.id})
        at = policy._clock.now() + timedelta(seconds=policy._timeout_s)
        context = ShipContext(number, at, order_log, take.mark)
        retry_after_s: float | None = None
        permanent = False
        began = time.perf_counter()
        # Not asyncio.timeout: a take lifts this deadline, and moving a timer costs 3 µs.
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop.time() + policy._timeout_s, take.cut_off)
        try:
            result = await policy._shipper.ship(order, context)
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
            return Tried(Event.SHIP, None, result)
        finally:
            deadline.end()
            take.live = False
        METRICS.shipment_seconds.observe(time.perf_counter() - began)
        if take.taken_at is not None:  # a retry would ship it twice
            order_log.warning(
                "the order was taken, then its shipment failed (%s): shipped, no result stored",
                failure,
            )
            return Tried(Event.SHIP)
        if permanent:
            METRICS.failures["permanent"] += 1
            return Tried(Event.FAIL, failure)
        if number >= policy._max_attempts:
            METRICS.failures[failure_class(failure, permanent=False)] += 1
            return Tried(Event.FAIL, failure)
        METRICS.reattempts += 1
        delay_s = policy._backoff.delay_s(number)
        if retry_after_s is not None:
            delay_s = max(delay_s, min(retry_after_s, policy._max_retry_after_s))
        note = (
            f"attempt {number} of {policy._max_attempts} failed ({failure});"
            f" retrying in {delay_s:.2f}s"
        )
        log.debug("order_id=%s %s", order.id, note)
        return Tried(Event.REATTEMPT, note, None, delay_s)
