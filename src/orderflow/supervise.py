"""The background loops' common parts: a loop that outlives errors, a backoff policy, and a
log that says an outage once.

Every background loop of the service (heartbeats, fetching, claiming, pruning, delivering) runs
under `supervised`: an error costs one round, never the loop; the loop ends only when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
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


class OutageLog:
    """Says once that something is unreachable (a WARNING line, no traceback: an outage is
    expected), and once that it is back; a bug (any other error) gets its traceback."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._down = False

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, StoreUnavailable):
            if not self._down:
                self._down = True
                self._log.warning("%s: %s", self._what, exc)
        else:
            self._log.error("%s failed", self._what, exc_info=exc)

    def succeeded(self) -> None:
        if self._down:
            self._down = False
            self._log.warning("%s: working again", self._what)


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
