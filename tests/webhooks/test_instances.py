"""Two real `orderflow serve` processes on one PostgreSQL database, both subscribed (with
--webhook) to one real receiver; the one delivering is SIGKILLed while the (slow) receiver holds
its request. Then: one subscription for the two; every event delivered at least once, in seq
order; each webhook-id acknowledged (2xx reaching a live sender) exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import eventually_sync
from tests.webhooks.receiver import SECRET, Received, Receiver, Reply, ThreadedReceiver

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
HELD = 8  # the arrival the receiver holds until the sender is dead


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Instance:
    """One `orderflow serve`, started (and ended) by its PID."""

    def __init__(self, *args: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = log.open("ab")
        command = [sys.executable, "-m", "orderflow", "serve", "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT
        )
        try:
            eventually_sync(self._ready, timeout_s=30)
        except AssertionError:
            raise AssertionError(f"not ready:\n{log.read_text()}") from None

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"exited {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kwargs)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._out.close()


def db(url: str, query: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            rows: list[asyncpg.Record] = await connection.fetch(query)
            return rows
        finally:
            await connection.close()

    return asyncio.run(go())


class SlowReceiver:
    """Answers each request after 20 ms, and holds arrival number HELD until `release`."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self._release: asyncio.Event | None = None
        self.receiver = Receiver(SECRET, self.answer)
        self.arrivals = 0
        self.held: Received | None = None
        self.cut = False  # the held request's connection closed under it

    async def answer(self, received: Received) -> Reply:
        self.arrivals += 1
        if self.arrivals == HELD:
            self._release = asyncio.Event()
            self.held = received
            self.holding.set()
            await self._release.wait()
            for _ in range(200):  # the kernel closed the dead sender's socket; see it here
                if received.sender_gone():
                    self.cut = True
                    break
                await asyncio.sleep(0.01)
        else:
            await asyncio.sleep(0.02)
        return 200, {}

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._release is not None
        loop.call_soon_threadsafe(self._release.set)


@pytest.fixture
def slow_receiver() -> Iterator[tuple[SlowReceiver, ThreadedReceiver]]:
    slow = SlowReceiver()
    threaded = ThreadedReceiver(slow.receiver)
    threaded.start()
    try:
        yield slow, threaded
    finally:
        threaded.close()


def test_a_killed_instance_loses_no_event_and_none_is_acknowledged_twice(
    database_url: str, tmp_path: Path, slow_receiver: tuple[SlowReceiver, ThreadedReceiver]
) -> None:
    slow, threaded = slow_receiver
    receiver = slow.receiver
    options = (
        "--database-url", database_url, "--ship-delay", "0.01", "--concurrency", "4",
        "--webhook", receiver.url, "--webhook-secret", SECRET, "--webhook-timeout", "2",
        "--webhook-retry-schedule", "0.2,0.5,1,2,4", "--lease-timeout", "1",
        "--heartbeat-interval", "0.3", "--poll-interval", "0.2",
    )  # fmt: skip
    instances = [Instance(*options, log=tmp_path / f"instance-{n}.log") for n in range(2)]
    try:
        assert len(db(database_url, "SELECT id FROM webhooks")) == 1  # one for both
        for n in range(15):
            order = {"customer": f"c{n}", "items": [{"name": "W", "quantity": 1}]}
            assert instances[n % 2].post("/orders", json=order).status_code == 201
        assert instances[1].post("/orders/process").status_code == 202

        assert slow.holding.wait(30), "the receiver never got its held request"
        [row] = db(database_url, "SELECT owner FROM webhooks")
        pid = int(row["owner"].rsplit("-", 2)[1])  # host-pid-random#claim
        [victim] = [i for i in instances if i.process.pid == pid]
        [survivor] = [i for i in instances if i is not victim]
        victim.kill()  # SIGKILL, mid-delivery
        slow.release(threaded.loop)  # answered to a sender that is gone: not acknowledged

        def all_delivered() -> bool:
            if db(database_url, "SELECT id FROM orders WHERE status <> 'shipped'"):
                return False
            [last] = db(database_url, "SELECT max(seq) AS seq FROM events")
            [sub] = db(database_url, "SELECT cursor FROM webhooks")
            return last["seq"] is not None and sub["cursor"] == last["seq"]

        eventually_sync(all_delivered, timeout_s=60, interval_s=0.1)
        [last] = db(database_url, "SELECT max(seq) AS seq FROM events")
        every = {f"evt_{seq}" for seq in range(1, last["seq"] + 1)}
        assert set(receiver.arrived) == every  # every event delivered, at least once
        assert set(receiver.acked) == every
        assert set(receiver.acked.values()) == {1}  # each webhook-id acknowledged once
        assert receiver.seqs_acked() == sorted(receiver.seqs_acked())  # in seq order
        assert slow.held is not None
        assert slow.cut
        again = {i for i, count in receiver.arrived.items() if count > 1}
        assert again == {slow.held.webhook_id}  # only the one in flight at the kill came twice
        assert not receiver.failures  # every signature verified
        log = db(database_url, "SELECT DISTINCT outcome FROM webhook_deliveries")
        assert [r["outcome"] for r in log] == ["delivered"]
        assert survivor.stop() == 0
    finally:
        for instance in instances:
            instance.close()
