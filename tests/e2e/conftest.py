"""Real `orderflow serve` processes on free loopback ports (tests/servers.py): the `serve`
fixture starts them and kills (by process group) whatever a test left running; `store_flags`
points one at each store; `threaded` serves a receiver (tests/receivers.py) from a thread of
its own, for them to call. `start_refused` runs a start that must fail and checks how it
failed; the rest lists orders over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.helpers import ROOT, free_port, is_listening, submit
from tests.receivers import Threaded
from tests.servers import Server

R = TypeVar("R")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Server]]:
    """`serve(*flags, env=…, port=…)` starts a Server; every one is killed at the end."""
    started: list[Server] = []

    class Tracked(Server):
        def __init__(
            self, *args: str, env: dict[str, str] | None = None, port: int | None = None
        ) -> None:
            log = tmp_path / f"server-{len(started)}.log"
            super().__init__(*args, log_path=log, env=env, port=port)
            started.append(self)

    yield Tracked
    for server in started:
        server.kill()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_flags(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, ...]:
    """`--database-url` for each store (SQLite: a new file; PostgreSQL: a new, empty
    database)."""
    if request.param == "memory":
        return ("--database-url", "memory://")
    if request.param == "sqlite":
        return ("--database-url", f"sqlite:///{tmp_path / 'o.db'}")
    return ("--database-url", request.getfixturevalue("database_url"))


@pytest.fixture
def threaded() -> Iterator[Callable[[R], R]]:
    """`threaded(receiver)` starts `receiver` on an event loop in a thread of its own and
    returns it; every one is closed at the end."""
    started: list[Threaded[Any]] = []

    def start(receiver: R) -> R:
        started.append(Threaded(receiver))  # type: ignore[type-var]
        started[-1].start()
        return receiver

    yield start
    for runner in started:
        runner.close()


@pytest.fixture(scope="session")
def snapshot_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The lines of a snapshot of 5 orders that a real server wrote at a clean stop."""
    folder = tmp_path_factory.mktemp("snapshot")
    snapshot = folder / "orders.jsonl"
    server = Server("--snapshot", str(snapshot), log_path=folder / "server.log")
    try:
        submit(server, 5)
        assert server.terminate() == 0
    finally:
        server.kill()
    return snapshot.read_bytes().splitlines(keepends=True)


def start_refused(*args: str, port: int | None = None, timeout_s: float = 30) -> str:
    """Run `orderflow serve --port PORT *args`, which must fail to start: exit status 2, one
    or two lines on stderr, no traceback, and the port as it was (a free one: not listening).
    Returns stderr."""
    port = free_port() if port is None else port
    was_listening = is_listening(port)
    out = subprocess.run(
        [sys.executable, "-m", "orderflow", "serve", "--port", str(port), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    stderr = out.stderr
    assert out.returncode == 2, f"exit {out.returncode}:\n{stderr}{out.stdout}"
    assert "Traceback" not in stderr + out.stdout, stderr
    lines = stderr.splitlines()
    assert 1 <= len(lines) <= 2, stderr
    assert lines[-1].startswith("orderflow: "), stderr
    assert is_listening(port) == was_listening
    return stderr


def all_orders(client: httpx.Client) -> list[dict[str, Any]]:
    """Every order, page after page."""
    orders: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    for _ in range(100):
        page = client.get("/orders", params=params).json()
        orders += page["orders"]
        if page["next_cursor"] is None:
            return orders
        params["cursor"] = page["next_cursor"]
    raise AssertionError("too many pages")


def statuses(client: httpx.Client) -> dict[str, str]:
    return {o["id"]: o["status"] for o in all_orders(client)}
