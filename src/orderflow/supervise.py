"""The background loops' common parts: a loop that outlives errors, a backoff policy, and the
logs that say an outage once: the store's (`StoreOutage`) and each loop's (`OutageLog`).

Every background loop of the service (heartbeats, fetching, claiming, pruning, delivering) runs
under `supervised`: an error costs one round, never the loop; the loop ends only when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from orderflow.errors import StoreUnavailable


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: `initial_s` before the first retry, doubling each time up
    to `max_s`, plus up to `initial_s` more at random so that many waiters spread out."""

    initial_s: float
    max_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay_s(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first)."""
        base: float = min(self.initial_s * 2 ** (retry - 1), self.max_s)
        return base + self.rng.uniform(0, self.initial_s)


class Wakeup(asyncio.Event):
    """An asyncio.Event that any thread may set, and often (new events, say): setting one that
    is set costs a check. `bind` it from the loop that waits on it."""

    _owner: tuple[asyncio.AbstractEventLoop, int] | None = None

    def bind(self) -> None:
        self._owner = (asyncio.get_running_loop(), threading.get_ident())

    def set_soon(self) -> None:
        if self._owner is None or self.is_set():
            return
        loop, thread = self._owner
        if threading.get_ident() == thread:
            self.set()
        else:
            loop.call_soon_threadsafe(self.set)


class StoreOutage:
    """The store's own account of an outage: one WARNING line when it starts (the first call
    that finds the store unreachable) and one when it ends (the first call that gets through),
    however many loops and requests meet it meanwhile; never a traceback: an outage is
    expected.

    Args:
        what: the store in the service's words ("the database").
    """

    def __init__(
        self, log: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._what = what
        self._clock = clock
        self.since: float | None = None  # when the outage started (None: no outage)

    def began(self, cause: BaseException | str) -> None:
        """An operation found the store unreachable: `cause` is what it met (an error, whose
        own cause is named when it has one, or a few words)."""
        if self.since is None:
            self.since = self._clock()
            self._log.warning("%s is unavailable (%s); retrying until it is back", self._what,
                              _one_line(cause), extra={"outage": "began"})  # fmt: skip

    def ended(self) -> None:
        """An operation got through: the outage, if there was one, is over."""
        if self.since is not None:
            down_s = round(self._clock() - self.since, 3)
            self.since = None
            self._log.warning("%s is back after %.1f s", self._what, down_s,
                              extra={"outage": "ended", "down_s": down_s})  # fmt: skip


def _one_line(cause: BaseException | str) -> str:
    if isinstance(cause, BaseException):
        root = cause.__cause__ or cause
        cause = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
    return " ".join(cause.split())


class OutageLog:
    """What a loop says of its failures: a bug (any error but StoreUnavailable) gets its
    traceback at ERROR; an outage of the store, which the store says itself (`StoreOutage`),
    is noted once at DEBUG, and once more when the loop works again."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._down = False

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, StoreUnavailable):
            if not self._down:
                self._down = True
                self._log.debug("%s: %s", self._what, exc)
        else:
            self._log.error("%s failed", self._what, exc_info=exc)

    def succeeded(self) -> None:
        if self._down:
            self._down = False
            self._log.debug("%s: working again", self._what)


async def supervised(
    step: Callable[[], Awaitable[object]],
    *,
    every_s: float,
    log: OutageLog,
    wake: asyncio.Event | None = None,
) -> None:
    """Run `step` every `every_s` seconds (sooner when `wake` is set) until cancelled. An error
    is logged (see OutageLog) and the loop goes on at the next round."""
    while True:
        try:
            await step()
        except Exception as exc:
            log.failed(exc)
        else:
            log.succeeded()
        if wake is None:
            await asyncio.sleep(every_s)
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                await wake.wait()
        wake.clear()
