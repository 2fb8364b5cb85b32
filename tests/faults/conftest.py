"""What the fault-injection suite needs: real `orderflow serve` processes (started and ended by
PID), a FaultProxy between them and PostgreSQL, a shipper that records every shipment in a file,
and the invariants checked from the database after every fault."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import eventually_sync
from tests.faults.proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
# Fast timers, so that a lease runs out in well under a second.
TIMERS = ("--heartbeat-interval", "0.2", "--lease-timeout", "0.6", "--poll-interval", "0.2")
LEASE_S = 0.6
HEARTBEAT_S = 0.2
RECORDER = "python:tests.faults.recorder:ship"


# The answer of a statement that committed: its CommandComplete tag, then ReadyForQuery, which
# PostgreSQL sends only once the implicit transaction of the statement committed.
def committed_answer(tag: bytes) -> re.Pattern[bytes]:
    """`tag` is a regex of the tag (b"UPDATE [1-9]": an UPDATE that changed rows)."""
    return re.compile(tag + rb"[^\x00]*\x00Z\x00\x00\x00\x05I")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Instance:
    """One `orderflow serve` process; every HTTP status it answered is kept, to check that
    none was a 500."""

    def __init__(self, *args: str, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.statuses: Counter[int] = Counter()
        command = [sys.executable, "-m", "orderflow", "serve", "--port", str(self.port), *args]
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, env=env
        )
        try:
            eventually_sync(self._ready, timeout_s=30)
        except AssertionError:
            self.kill()  # the test never gets to end it
            raise AssertionError(f"not ready:\n{log.read_text()}") from None

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"exited {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 30)
        response = httpx.request(method, self.url + path, **kwargs)
        self.statuses[response.status_code] += 1
        return response

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout_s: float = 30) -> int:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._out.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(timeout=30)
        self._out.close()

    def log_text(self) -> str:
        return self.log.read_text()


class Cluster:
    """Starts instances for a test and ends them (by the PIDs it started) at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.shipments = tmp_path / "shipments.log"
        self.shipments.touch()
        self.instances: list[Instance] = []

    def start(self, *args: str, delay_s: float = 0.05, **env: str) -> Instance:
        environ = {
            **os.environ,
            "RECORDER_FILE": str(self.shipments),
            "RECORDER_DELAY": str(delay_s),
            **env,
        }
        log = self.tmp_path / f"instance-{len(self.instances)}.log"
        instance = Instance(*args, log=log, env=environ)
        self.instances.append(instance)
        return instance

    def shipped(self) -> Counter[str]:
        """How many times each order reached the carrier (the recorder's file)."""
        return Counter(self.shipments.read_text().split())

    def close(self) -> None:
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.kill()
        for instance in self.instances:
            assert not instance.statuses[500], f"a 500 was answered: {instance.statuses}"
            assert "unhandled error" not in instance.log_text(), instance.log_text()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", 5432)) as running:
        yield running


def db(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on the database directly (not through the proxy)."""

    async def go() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            rows: list[asyncpg.Record] = await connection.fetch(query, *args)
            return rows
        finally:
            await connection.close()

    return asyncio.run(go())


def histories(url: str) -> dict[str, list[str]]:
    rows = db(url, "SELECT id, history FROM orders")
    import json

    return {row["id"]: [entry["status"] for entry in json.loads(row["history"])] for row in rows}


def check_invariants(url: str, accepted: list[str], *, settle_s: float = LEASE_S * 10) -> None:
    """From the database: nothing that got a 201 is lost; no order has two `shipped` entries or
    a shipment after a cancel; nothing stays processing once the fault is over (within
    `settle_s`: lease + heartbeats + the shipments themselves)."""

    def nothing_processing() -> bool:
        return not db(url, "SELECT id FROM orders WHERE status = 'processing'")

    eventually_sync(nothing_processing, timeout_s=settle_s)
    seen = histories(url)
    missing = set(accepted) - set(seen)
    assert not missing, f"{len(missing)} accepted orders are lost"
    for order_id, statuses in seen.items():
        assert statuses.count("shipped") <= 1, (order_id, statuses)
        if "cancelled" in statuses:
            assert "shipped" not in statuses, (order_id, statuses)
        assert statuses[0] == "pending", (order_id, statuses)


def submit(instance: Instance, count: int) -> list[str]:
    ids = []
    for n in range(count):
        response = instance.request(
            "POST", "/orders", json={"customer": f"c{n}", "items": [{"name": "W", "quantity": 1}]}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def wait_until_held(url: str, at_least: int = 1) -> None:
    """Until at least `at_least` orders are held by an instance (shipments under way)."""
    eventually_sync(
        lambda: len(db(url, "SELECT id FROM orders WHERE owner IS NOT NULL")) >= at_least,
        timeout_s=20,
        interval_s=0.01,
    )


def stopped_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_for(condition: Any, timeout_s: float = 20) -> Any:
    return eventually_sync(condition, timeout_s=timeout_s, interval_s=0.02)


__all__ = ["time"]
