"""Run the real `orderflow serve` in a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One `orderflow serve` process; stopped (by its PID) when the test ends."""

    def __init__(self, *args: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "orderflow", "serve", "--port", str(self.port), *args]
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: the server and its worker
        )
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready:\n{self.log_path.read_text()}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def terminate(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL the server and its worker process, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this test started
        self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Server]]:
    started: list[Server] = []

    class Tracked(Server):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            log = tmp_path / f"server-{len(started)}.log"
            super().__init__(*args, log_path=log, env=env)
            started.append(self)

    yield Tracked
    for server in started:
        server.kill()


def wait_for(predicate, timeout_s: float = 30, interval_s: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy (bounded), and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval_s)


__all__ = ["Server", "free_port", "signal", "wait_for"]
