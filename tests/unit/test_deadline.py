"""Deadlines: tasks' timeouts under one timer; each may, when it falls due, wait once more
instead."""

from __future__ import annotations

import asyncio

import pytest

from orderflow.deadline import Deadlines


async def test_it_cancels_the_task_when_due_and_knows_the_cancel_is_its_own() -> None:
    deadline = Deadlines().start(0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert (deadline.end(), deadline.expired, deadline.extended) == (True, True, False)
    assert deadline.end()  # again: the same answer, the task not uncancelled twice
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_later_is_asked_once_when_due_and_moves_it() -> None:
    loop = asyncio.get_running_loop()
    asked: list[float] = []

    def later() -> float:
        asked.append(loop.time())
        return loop.time() + 0.05

    began = loop.time()
    deadline = Deadlines().start(0.01, later)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.end()
    assert deadline.extended
    assert len(asked) == 1
    assert loop.time() - began >= 0.06


@pytest.mark.parametrize("when", [None, -1.0], ids=["no-later-time", "a-time-past"])
async def test_a_later_that_gives_no_later_time_does_not_move_it(when: float | None) -> None:
    deadline = Deadlines().start(0.01, lambda: when)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.end()
    assert not deadline.extended


async def test_another_cancel_is_not_its_own() -> None:
    async def guarded() -> bool:
        deadline = Deadlines().start(5)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return deadline.end()
        return True

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)
    task.cancel()
    assert await task is False


async def test_ended_in_time_it_never_fires() -> None:
    deadline = Deadlines().start(0.01)
    assert not deadline.end()
    await asyncio.sleep(0.05)
    assert not deadline.expired


def test_it_needs_a_task() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="inside one"):
            loop.run_until_complete(_outside_a_task(loop))
    finally:
        loop.close()


async def _outside_a_task(loop: asyncio.AbstractEventLoop) -> None:
    # A coroutine run by run_until_complete is a task; a plain callback is not.
    future: asyncio.Future[None] = loop.create_future()

    def make() -> None:
        try:
            Deadlines().start(1)
        except RuntimeError as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    loop.call_soon(make)
    await future


async def test_many_tasks_share_one_timer_and_each_falls_due_at_its_time() -> None:
    """Deadlines of several lengths, under one timer: each task is cancelled at its own time,
    the ones that ended in time never fire, and the ended ones leave the heap."""
    deadlines = Deadlines()
    fired: list[int] = []

    async def guarded(n: int, timeout_s: float, work_s: float) -> None:
        deadline = deadlines.start(timeout_s)
        try:
            await asyncio.sleep(work_s)
        except asyncio.CancelledError:
            assert deadline.end()
            fired.append(n)
        finally:
            deadline.end()

    await asyncio.gather(
        guarded(0, 0.06, 5), guarded(1, 0.02, 5), guarded(2, 0.5, 0), guarded(3, 0.04, 0.001)
    )
    assert fired == [1, 0]  # the shortest first; the others ended in time
    assert deadlines.pending == 0


async def test_ended_deadlines_behind_a_long_one_are_swept_out() -> None:
    """Thousands of attempts that end, all begun after one that runs on (their deadlines fall
    after its own: it stays at the top), do not pile up in the heap."""
    deadlines = Deadlines()
    long = deadlines.start(30)
    for _ in range(25_000):
        deadlines.start(30).end()
    assert deadlines.pending < 12_000
    assert not long.end()
    assert deadlines.pending < 12_000
