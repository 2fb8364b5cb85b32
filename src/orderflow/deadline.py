"""Deadlines: `asyncio.timeout`'s job (cancel a task at a time, and tell its own cancel from
anyone else's) for many tasks at once, with one more rule: when a deadline falls due, it may
ask once for a later time to wait until instead. Shipping's deadlines need it: once a receiver
took an order, its deadline no longer ends the attempt (its body has time of its own).

One heap of deadlines, and one timer for the earliest, serve them all: a deadline that ends
leaves the heap when it reaches the top (attempts that all last the same reach it in the order
they began), so a busy engine sets a timer about once a timeout, not once an attempt.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any

# Ended deadlines waiting behind a long one at the head are swept out when there are this many.
_SWEEP_AT = 10_000


class Deadlines:
    """The deadlines of one part of the service (the engine's attempts, an HTTP client's
    calls), all under one timer."""

    def __init__(self) -> None:
        # (when, a count that breaks ties in start order, the deadline): compared in C.
        self._heap: list[tuple[float, int, Deadline]] = []
        self._count = 0
        self._ended = 0  # ended deadlines still in the heap, below a live top
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(
        self,
        timeout_s: float,
        later: Callable[[], float | None] | None = None,
        task: asyncio.Task[Any] | None = None,
    ) -> Deadline:
        """A deadline for `task` (default: the current one), `timeout_s` from now (the loop's
        time): then it cancels the task, unless `later()`, asked then, gives a later time to
        wait until. End it (`Deadline.end`) in every exit of the work it guards."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if task is None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("a deadline guards a task: start it inside one")
        deadline = Deadline(self, loop, task, loop.time() + timeout_s, later)
        self._count += 1
        heapq.heappush(self._heap, (deadline.when, self._count, deadline))
        if self._timer is None or deadline.when < self._timer_at:
            self._arm(deadline.when)
        return deadline

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._fall_due), when

    def ended(self, deadline: Deadline) -> None:
        """`deadline` ended: drop it (and the ended ones under it) if it is at the top, else
        count it, and sweep the heap once most of it has ended."""
        heap = self._heap
        if heap and heap[0][2] is deadline:
            heapq.heappop(heap)
            while heap and heap[0][2].ended:
                heapq.heappop(heap)[2].queued = False
                self._ended -= 1
            return
        self._ended += 1
        if self._ended >= _SWEEP_AT and 2 * self._ended >= len(heap):
            for _, _, each in heap:
                if each.ended:
                    each.queued = False
            self._heap = [entry for entry in heap if not entry[2].ended]
            heapq.heapify(self._heap)
            self._ended = 0

    def _fall_due(self) -> None:
        assert self._loop is not None
        self._timer = None
        now, heap = self._loop.time(), self._heap
        while heap and (heap[0][2].ended or heap[0][0] <= now):
            deadline = heapq.heappop(heap)[2]
            deadline.queued = False
            if deadline.ended:
                self._ended -= 1
            else:
                deadline.fall_due()
        if heap:
            self._arm(heap[0][0])

    @property
    def pending(self) -> int:
        """Deadlines still kept (ended ones among them until they reach the top)."""
        return len(self._heap)


class Deadline:
    """One task's deadline (see `Deadlines.start`). After the guarded awaits, `end()` in every
    exit (a ``finally``): on a CancelledError, ``if deadline.end()`` it was this deadline's own
    (a timeout), else it is someone else's and must be raised again."""

    __slots__ = (
        "_cancelling",
        "_deadlines",
        "_handle",
        "_later",
        "_own",
        "_task",
        "ended",
        "expired",
        "extended",
        "loop",
        "queued",
        "when",
    )

    def __init__(
        self,
        deadlines: Deadlines,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[Any],
        when: float,
        later: Callable[[], float | None] | None,
    ) -> None:
        self._deadlines = deadlines
        self.loop = loop
        self._task = task
        self._cancelling = task.cancelling()
        self._later = later
        self._handle: asyncio.TimerHandle | None = None  # its own timer, once extended
        self._own: bool | None = None  # once ended: whether the task's cancel was its own
        self.when = when
        self.ended = False
        self.expired = False  # it cancelled the task
        self.extended = False  # `later` gave it a later time
        self.queued = True  # in its Deadlines' heap (it leaves it when it reaches the top)

    def end(self) -> bool:
        """Stop the deadline (when the guarded work ends, however it ends; again changes
        nothing); True if it cancelled the task and nobody else did since it began."""
        if self._own is None:
            self.ended = True
            if self._handle is not None:
                self._handle.cancel()
            self._own = self.expired and self._task.uncancel() <= self._cancelling
            if self.queued:
                self._deadlines.ended(self)
        return self._own

    def fall_due(self) -> None:
        """The deadline's time came: ask `later` once; cancel the task, or wait till then."""
        later, self._later = self._later, None
        if later is not None:
            when = later()
            if when is not None and when > self.loop.time():
                self.extended = True
                self._handle = self.loop.call_at(when, self.fall_due)
                return
        self.expired = True
        self._task.cancel()
