"""Attempts: one attempt at shipping an order, under its deadline, and what it became under
the retry policy: shipped; failed for good (a PermanentFailure, or the last attempt's failure);
or to be tried again after a backoff (or the receiver's Retry-After, if longer). An attempt
whose order the shipper says was taken (`ShipContext.mark_taken`) ships, whatever happens
after: a retry would ship it twice. The processor runs the attempts and writes what each
became; nothing here writes to the store."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, NamedTuple

from orderflow.clock import Clock
from orderflow.deadline import Deadlines
from orderflow.domain import Event, Parcel
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
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_retry_after_s = max_retry_after_s
        self._result_wait_s = result_wait_s
        self._timeout_s = timeout_s
        self._timeout = timedelta(seconds=timeout_s)
        self._deadlines = Deadlines()

    def begin(self, parcel: Parcel, number: int, task: asyncio.Task[Any]) -> Attempt:
        """Attempt number `number` (1 for the first) at shipping `parcel`, in `task` (the one
        its deadline cancels); run it with `run`."""
        return Attempt(self, parcel, number, task)


class Attempt:
    """One attempt: `run` it once; `taken` says whether the shipper said its order was taken
    (so that a shipment cut off after that, at shutdown, is known to be shipped)."""

    __slots__ = ("_attempts", "_parcel", "_taken_at", "_task", "live", "number")

    def __init__(
        self, attempts: Attempts, parcel: Parcel, number: int, task: asyncio.Task[Any]
    ) -> None:
        self._attempts = attempts
        self._parcel = parcel
        self._task = task
        self.number = number
        self.live = True  # a take after the attempt ended changes nothing
        self._taken_at: float | None = None  # the loop's time

    @property
    def taken(self) -> bool:
        return self._taken_at is not None

    def _mark_taken(self) -> None:
        if self._taken_at is None and self.live:
            self._taken_at = asyncio.get_running_loop().time()

    def _cut_off(self) -> float | None:
        """Asked when the deadline falls due: None (not taken: the attempt times out), or when
        to cut it off instead: no sooner than `result_wait_s` after the take."""
        taken_at = self._taken_at
        if taken_at is None:
            return None
        now = asyncio.get_running_loop().time()
        return max(taken_at + self._attempts._result_wait_s, now) + _CUT_OFF_GRACE_S

    async def run(self) -> Tried:
        """Ship once; what it became. Raises CancelledError only for a cancel from outside (a
        user's cancel, a shutdown), never for its own deadline."""
        policy, parcel, number = self._attempts, self._parcel, self.number
        deadline = policy._deadlines.start(policy._timeout_s, self._cut_off, self._task)
        began = deadline.when - policy._timeout_s
        context = ShipContext(
            number,
            policy._clock.now() + policy._timeout,
            mark_taken=self._mark_taken,
            order_id=parcel.id,
        )
        retry_after_s: float | None = None
        permanent = False
        try:
            result = await policy._shipper.ship(parcel, context)
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
            METRICS.shipment_seconds.observe(deadline.loop.time() - began)
            return Tried(Event.SHIP, None, result)
        finally:
            deadline.end()
            self.live = False
        METRICS.shipment_seconds.observe(deadline.loop.time() - began)
        if self._taken_at is not None:  # a retry would ship it twice
            context.log.warning(
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
        log.debug("order_id=%s %s", parcel.id, note)
        return Tried(Event.REATTEMPT, note, None, delay_s)
