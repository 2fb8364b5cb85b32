"""Run the real `orderflow serve` in a subprocess on a free loopback port: `Server` starts one
and waits until it answers `/healthz`; the `serve` fixture kills (by process group) whatever a
test left running. `start_refused` runs a start that must fail and checks how it failed; the
rest submits and lists orders over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
_STARTED = re.compile(r"orderflow \S+ serving http://(?P<host>\S+):(?P<port>\d+) \((?P<rest>.*)\)")


# One TLS context for every client: httpx builds one per client otherwise (tens of ms each).
_TLS = ssl.create_default_context()


def http_client(base_url: str, timeout_s: float = 30) -> httpx.Client:
    """An HTTP client of `base_url`, cheap to make (one per thread is fine)."""
    return httpx.Client(base_url=base_url, timeout=timeout_s, verify=_TLS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `port` now."""
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


class Server:
    """One `orderflow serve` process in a process group of its own, ready once `/healthz`
    answers 200. `port=0` lets it pick a port, read back from its start-up line (logged at
    INFO, so not with `--log-level warning`)."""

    def __init__(
        self,
        *args: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = free_port() if port is None else port
        self.log_path = log_path
        self.startup_line = ""
        command = [sys.executable, "-m", "orderflow", "serve", "--port", str(self.port), *args]
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a group of its own, so a kill reaches only what we started
        )
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30) -> None:
        try:
            if self.port == 0:
                self.port = int(eventually_sync(self._started, timeout_s=timeout_s)["port"])
            eventually_sync(self._answers, timeout_s=timeout_s)
            started = self._started()
            self.startup_line = "" if started is None else started.group(0)
        except AssertionError as exc:
            raise AssertionError(f"server not ready ({exc}):\n{self.output()}") from None

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output()}")

    def _started(self) -> re.Match[str] | None:
        self._alive()
        return _STARTED.search(self.output())

    def _answers(self) -> bool:
        self._alive()
        try:
            with http_client(self.url, timeout_s=1) as client:
                return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def client(self) -> httpx.Client:
        return http_client(self.url)

    def terminate(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Send `sig` to the server alone and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.close()

    def kill(self) -> None:
        """SIGKILL the process group this helper started, as a crash would (unless the server
        was reaped already: its group id may be someone else's by now)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.close()

    def close(self) -> None:
        self._log.close()


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


ORDER = {"customer": "John Doe", "items": [{"name": "Monster Energy", "quantity": 2}]}


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


def submit(server: Server, count: int, threads: int = 10) -> list[str]:
    """POST `count` orders from `threads` threads (a client each); returns their ids."""

    def some(share: range) -> list[str]:
        with http_client(server.url) as client:
            ids = []
            for _ in share:
                response = client.post("/orders", json=ORDER)
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            return ids

    with ThreadPoolExecutor(max_workers=threads) as pool:
        shares = pool.map(some, (range(n, count, threads) for n in range(threads)))
        return [order_id for share in shares for order_id in share]


__all__ = [
    "ORDER",
    "ROOT",
    "Server",
    "all_orders",
    "free_port",
    "http_client",
    "is_listening",
    "start_refused",
    "statuses",
    "submit",
]
