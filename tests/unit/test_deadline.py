"""Deadline: a task's timeout that may, when it falls due, wait once more instead."""

from __future__ import annotations

import asyncio

import pytest

from orderflow.deadline import Deadline


async def test_it_cancels_the_task_when_due_and_knows_the_cancel_is_its_own() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.01)
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
    deadline = Deadline(began + 0.01, later)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.end()
    assert deadline.extended
    assert len(asked) == 1
    assert loop.time() - began >= 0.06


@pytest.mark.parametrize("when", [None, -1.0], ids=["no-later-time", "a-time-past"])
async def test_a_later_that_gives_no_later_time_does_not_move_it(when: float | None) -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.01, lambda: when)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.end()
    assert not deadline.extended


async def test_another_cancel_is_not_its_own() -> None:
    loop = asyncio.get_running_loop()

    async def guarded() -> bool:
        deadline = Deadline(loop.time() + 5)
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
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.01)
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
            Deadline(loop.time() + 1)
        except RuntimeError as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    loop.call_soon(make)
    await future
