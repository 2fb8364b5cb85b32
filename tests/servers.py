"""`Server`: one real `orderflow serve` process on a loopback port, for the suites that run real
processes (e2e, faults, browser). Each folder's conftest.py starts them through a fixture that
ends, by PID, whatever a test left running."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from signal import SIGCONT, SIGKILL, SIGTERM, Signals
from typing import Any

import httpx

from tests.conftest import eventually_sync
from tests.helpers import ROOT, free_port, http_client

_STARTED = re.compile(r"orderflow \S+ serving http://(?P<host>\S+):(?P<port>\d+) \((?P<rest>.*)\)")


class Server:
    """One `orderflow serve` process in a process group of its own, ready once `/healthz`
    answers 200. `port=0` lets it pick a port, read back from its start-up line (logged at
    INFO, so not with `--log-level warning`). `env` is added to this process's environment.
    Every status `request` was answered is kept in `statuses`."""

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
        self.statuses: Counter[int] = Counter()
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

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request on a connection of its own (httpx.request's arguments); its status is
        kept in `statuses`."""
        kwargs.setdefault("timeout", 30)
        response = httpx.request(method, self.url + path, **kwargs)
        self.statuses[response.status_code] += 1
        return response

    def signal(self, sig: Signals) -> None:
        """Send `sig` to the server, unless it exited."""
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def terminate(self, sig: Signals = SIGTERM, timeout_s: float = 30) -> int:
        """Send `sig` to the server alone and return its exit status."""
        self.signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.close()

    def stop(self, timeout_s: float = 30) -> int:
        """Resume the server (it may be stopped: SIGSTOP), then SIGTERM; its exit status."""
        self.signal(SIGCONT)
        return self.terminate(timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL the process group this helper started, as a crash would (unless the server
        was reaped already: its group id may be someone else's by now)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, SIGKILL)
            self.process.wait(timeout=30)
        self.close()

    def close(self) -> None:
        self._log.close()
