"""`Deadline`: `asyncio.timeout`'s job (cancel the current task at a time, and tell its own cancel
from anyone else's), with one more rule: when it falls due, it may ask once for a later time to
wait until instead. Shipping's deadlines need it: once a receiver took an order, its deadline no
longer ends the attempt, and once an answer's head is in, its body has time of its own. Asking
when it falls due, not moving the timer when the event happens, keeps the common case (an
answer well within its deadline) at one timer set and cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """Cancels the current task at `when` (the running loop's time), unless `later()`, asked
    then, gives a later time: it cancels the task at that time instead (`later` is asked once).

    Use as ``deadline = Deadline(when, later)``, then the guarded awaits, then `end()` in every
    exit (a ``finally``): on a CancelledError, ``if deadline.end()`` it was this deadline's own
    (a timeout), else it is someone else's and must be raised again.
    """

    __slots__ = (
        "_cancelling",
        "_handle",
        "_later",
        "_loop",
        "_own",
        "_task",
        "expired",
        "extended",
    )

    def __init__(self, when: float, later: Callable[[], float | None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline guards a task: create it inside one")
        self._task = task
        self._cancelling = task.cancelling()
        self._later = later
        self.expired = False  # it cancelled the task
        self.extended = False  # `later` gave it a later time
        self._own: bool | None = None  # once ended: whether the task's cancel was its own
        self._handle = self._loop.call_at(when, self._fall_due)

    def end(self) -> bool:
        """Stop the timer (when the guarded work ends, however it ends; again changes nothing);
        True if this deadline cancelled the task and nobody else did since it began."""
        if self._own is None:
            self._handle.cancel()
            self._own = self.expired and self._task.uncancel() <= self._cancelling
        return self._own

    def _fall_due(self) -> None:
        later, self._later = self._later, None
        if later is not None:
            when = later()
            if when is not None and when > self._loop.time():
                self.extended = True
                self._handle = self._loop.call_at(when, self._fall_due)
                return
        self.expired = True
        self._task.cancel()
