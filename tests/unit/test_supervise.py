"""The background loops' helpers: Backoff, StoreOutage, OutageLog and `supervised`."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from orderflow.errors import OutcomeUnknown, StoreUnavailable
from orderflow.supervise import Backoff, OutageLog, StoreOutage, supervised
from tests.conftest import eventually


class _Extreme(random.Random):
    """Draws always the lower (or the upper) bound."""

    def __init__(self, upper: bool) -> None:
        super().__init__(0)
        self.upper = upper

    def uniform(self, a: float, b: float) -> float:
        return b if self.upper else a


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap() -> None:
    """Backoff: initial_s, doubling, capped at max_s, plus jitter of at most initial_s."""
    low = Backoff(0.5, max_s=3.0, rng=_Extreme(upper=False))
    assert [low.delay_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    high = Backoff(0.5, max_s=3.0, rng=_Extreme(upper=True))
    assert [high.delay_s(n) for n in range(1, 5)] == [1.0, 1.5, 2.5, 3.5]


def test_backoff_jitter_is_at_most_the_initial_wait() -> None:
    """Backoff jitter lies in [0, initial_s] and does spread the waits."""
    backoff = Backoff(0.25, max_s=2.0, rng=random.Random(42))
    for retry in range(1, 12):
        base = min(0.25 * 2 ** (retry - 1), 2.0)
        delays = [backoff.delay_s(retry) for _ in range(200)]
        assert all(base <= d <= base + 0.25 for d in delays)
        assert len(set(delays)) > 1  # spread out, not all alike


def test_a_zero_backoff_never_waits() -> None:
    """A backoff of 0 s waits 0 s every time."""
    assert {Backoff(0.0).delay_s(n) for n in range(1, 10)} == {0.0}


def test_an_outage_is_said_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    """StoreOutage: one WARNING for an outage however many meet it, one when it is over (with
    how long it lasted), no traceback, in the service's words with the cause named."""
    now = [100.0]
    outage = StoreOutage(logging.getLogger("orderflow.test"), "the database", lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="orderflow.test"):
        outage.ended()  # nothing was down: nothing to say
        for _ in range(5):
            try:
                raise StoreUnavailable("the database is unavailable") from ConnectionResetError(
                    104, "Connection reset\nby peer"
                )
            except StoreUnavailable as exc:
                outage.began(exc)
        outage.began(OutcomeUnknown("connection lost"))  # still the same outage
        outage.began("the notification connection was lost")
        now[0] += 6.25
        outage.ended()
        outage.ended()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "the database is unavailable (ConnectionResetError: [Errno 104] Connection reset by"
            " peer); retrying until it is back",
        ),
        (logging.WARNING, "the database is back after 6.2 s"),
    ]
    assert all(r.exc_info is None for r in caplog.records)  # an outage is no bug
    assert [(r.outage, getattr(r, "down_s", None)) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("began", None),
        ("ended", 6.25),
    ]


def test_a_loop_that_meets_an_outage_leaves_the_saying_to_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OutageLog: a loop's failures in an outage are noted once at DEBUG, and once when it
    works again: the store says the outage (StoreOutage), so it is not said once per loop."""
    log = OutageLog(logging.getLogger("orderflow.test"), "fetching ready orders")
    with caplog.at_level(logging.DEBUG, logger="orderflow.test"):
        log.succeeded()  # nothing was down: nothing to say
        for _ in range(5):
            log.failed(StoreUnavailable("database down"))
        log.failed(OutcomeUnknown("connection lost"))  # still the same outage
        log.succeeded()
        log.succeeded()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "fetching ready orders: database down"),
        (logging.DEBUG, "fetching ready orders: working again"),
    ]
    assert all(r.exc_info is None for r in caplog.records)


def test_a_second_outage_is_said_again(caplog: pytest.LogCaptureFixture) -> None:
    """After a recovery, the next outage is said again, by the store and by each loop."""
    outage = StoreOutage(logging.getLogger("orderflow.test"), "the database", lambda: 0.0)
    log = OutageLog(logging.getLogger("orderflow.test"), "heartbeat")
    with caplog.at_level(logging.DEBUG, logger="orderflow.test"):
        for _ in range(2):
            for _ in range(2):
                outage.began("down")
                log.failed(StoreUnavailable("down"))
            outage.ended()
            log.succeeded()
    assert [r.getMessage() for r in caplog.records] == [
        "the database is unavailable (down); retrying until it is back",
        "heartbeat: down",
        "the database is back after 0.0 s",
        "heartbeat: working again",
    ] * 2


def test_a_bug_gets_a_traceback_every_time(caplog: pytest.LogCaptureFixture) -> None:
    """OutageLog: an error that is not an outage is logged at ERROR with its traceback, every
    time."""
    log = OutageLog(logging.getLogger("orderflow.test"), "heartbeat")
    with caplog.at_level(logging.WARNING, logger="orderflow.test"):
        for n in range(2):
            try:
                raise KeyError(n)
            except KeyError as exc:
                log.failed(exc)
        log.succeeded()  # a bug is not an outage: no "working again"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "heartbeat failed"),
        (logging.ERROR, "heartbeat failed"),
    ]
    assert all(r.exc_info is not None and r.exc_info[0] is KeyError for r in caplog.records)


async def test_supervised_outlives_errors_and_stops_on_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`supervised` goes on after outages and bugs, logs them through OutageLog, and ends when
    cancelled."""
    rounds: list[int] = []
    errors = [StoreUnavailable("down"), StoreUnavailable("down"), RuntimeError("bug")]

    async def step() -> None:
        rounds.append(len(rounds))
        if errors:
            raise errors.pop(0)

    with caplog.at_level(logging.DEBUG, logger="orderflow.test"):
        task = asyncio.create_task(
            supervised(step, every_s=0.001, log=OutageLog(logging.getLogger("orderflow.test"), "x"))
        )
        await eventually(lambda: len(rounds) >= 6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
    count = len(rounds)
    await asyncio.sleep(0.01)
    assert len(rounds) == count  # nothing runs after the cancel
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "x: down"),
        (logging.ERROR, "x failed"),
        (logging.DEBUG, "x: working again"),
    ]


async def test_supervised_runs_at_once_and_again_when_woken() -> None:
    """`supervised` runs a round at once, then one per wake-up, long before every_s."""
    wake = asyncio.Event()
    rounds = asyncio.Queue[int]()
    count = 0

    async def step() -> None:
        nonlocal count
        count += 1
        rounds.put_nowait(count)

    log = OutageLog(logging.getLogger("orderflow.test"), "x")
    task = asyncio.create_task(supervised(step, every_s=3600, log=log, wake=wake))
    try:
        assert await rounds.get() == 1  # the first round needs no wake-up
        wake.set()
        assert await asyncio.wait_for(rounds.get(), timeout=10) == 2
        wake.set()
        assert await asyncio.wait_for(rounds.get(), timeout=10) == 3
        assert rounds.empty()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_supervised_lets_a_cancel_inside_a_step_end_the_loop() -> None:
    """A cancel that arrives inside a step ends the loop (it is not taken for an error)."""
    entered = asyncio.Event()

    async def step() -> None:
        entered.set()
        await asyncio.Event().wait()  # forever

    log = OutageLog(logging.getLogger("orderflow.test"), "x")
    task = asyncio.create_task(supervised(step, every_s=0.001, log=log))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
