"""Shippers: how an order leaves the building. The contract every shipper keeps, and the
simulated one that stands in for a carrier (the others are in `shippers/`, where
`load_shipper` picks one from `--shipper`).

A shipper is called once per attempt, as ``await shipper.ship(parcel, context)``: `parcel`
is the order (`parcel.order`, or as JSON, `parcel.json`; the other form is made only if asked
for), `context` the attempt's `ShipContext`:

- it returns None, or a JSON object: the shipment's result (a tracking number, say), stored on
  the order (at most `MAX_RESULT_BYTES` encoded);
- it raises `PermanentFailure` to fail the order at once, with no retry;
- any other exception is a retryable failure (retried under ``--max-attempts``); a
  `RetryableFailure` may say how long to wait first (``Retry-After``);
- it may be cancelled at any await: a user cancelled the order, its deadline passed, or the
  service is stopping;
- it may call ``context.mark_taken()`` at its point of no return (the receiver has taken the
  order): from then on the attempt ships, whatever happens next. The deadline no longer fails
  it; the shipper has `RESULT_WAIT_S` more to return its result (or till the deadline, if later;
  it is cancelled a second after that), and a failure after that point ships with no result
  (one warning line says why).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from orderflow.domain import Parcel
from orderflow.errors import PermanentFailure, RetryableFailure

_log = logging.getLogger("orderflow.processor")

MAX_RESULT_BYTES = 4096
# How long a shipper may take to return its result once the order is taken (`mark_taken`): the
# HTTP shipper reads a 2xx's body this long after its head (or till the deadline, if later).
RESULT_WAIT_S = 5.0


def _not_attempted() -> None:
    return None


class ShipContext:
    """What a shipper knows of the attempt besides the order.

    Attributes:
        attempt: 1 for the first attempt of this hold, then 2, 3, … under ``--max-attempts``.
        deadline: when this attempt is cancelled (aware, UTC): the order's ``--process-timeout``,
            unless the order was taken before it.
        log: a logger for the shipper's own lines; they carry the order id.
        mark_taken: call it, synchronously, the moment the receiver has taken the order (the
            shipper's point of no return: the HTTP shipper calls it when a 2xx head is in).
            From then on the attempt ships whatever happens: its deadline no longer fails it,
            the shipper has `RESULT_WAIT_S` more for its result, or till the deadline if later
            (a second after that it is cancelled), and a failure ships with no result. Calling
            it again changes nothing; a user's cancel still cancels the call at once.

    The engine makes `log` only when a shipper reads it: most attempts of a busy service
    never do, and a logger adapter costs more than the rest of the attempt's bookkeeping.
    """

    __slots__ = ("_log", "_order_id", "attempt", "deadline", "mark_taken")

    def __init__(
        self,
        attempt: int,
        deadline: datetime,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        mark_taken: Callable[[], None] = _not_attempted,
        *,
        order_id: str = "",
    ) -> None:
        self.attempt = attempt
        self.deadline = deadline
        self.mark_taken = mark_taken
        self._log = log
        self._order_id = order_id

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        log = self._log
        if log is None:
            log = self._log = logging.LoggerAdapter(_log, {"order_id": self._order_id})
        return log

    def __repr__(self) -> str:
        return f"ShipContext(attempt={self.attempt}, order_id={self._order_id!r})"


class Shipper(Protocol):
    async def ship(self, parcel: Parcel, context: ShipContext) -> dict[str, Any] | None:
        """Ship the order `parcel` holds; return its result (or None) once shipped. Raise to
        fail the attempt."""

    async def close(self) -> None:
        """Release what the shipper holds (connections); called once, at shutdown."""


class SimulatedShipper:
    """Waits `delay_s` plus a uniform random `jitter_s`, then fails a `failure_rate` fraction."""

    def __init__(
        self,
        delay_s: float = 1.0,
        jitter_s: float = 0.0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if delay_s < 0 or jitter_s < 0 or not 0.0 <= failure_rate <= 1.0:
            raise ValueError("delay and jitter must be >= 0, failure_rate within [0, 1]")
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.failure_rate = failure_rate
        self._rng = rng or random.Random()

    async def ship(self, parcel: Parcel, context: ShipContext) -> dict[str, Any] | None:
        delay_s = self.delay_s + (self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0)
        # Always await, even for 0 s: a worker must yield to the loop between orders.
        await asyncio.sleep(delay_s)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            raise RetryableFailure("simulated carrier failure")
        return None

    async def close(self) -> None:
        return None


__all__ = [
    "MAX_RESULT_BYTES",
    "RESULT_WAIT_S",
    "Parcel",
    "PermanentFailure",
    "RetryableFailure",
    "ShipContext",
    "Shipper",
    "SimulatedShipper",
]
