"""Two real `orderflow serve` processes on one PostgreSQL database, both subscribed (with
--webhook) to one real receiver; the one delivering is SIGKILLed while the (slow) receiver holds
its request. Then: one subscription for the two; every event delivered at least once, in seq
order; each webhook-id acknowledged (2xx reaching a live sender) exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from tests.conftest import eventually_sync
from tests.postgres import query
from tests.receivers import SECRET, Received, Receiver, Reply
from tests.servers import Server

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

HELD = 8  # the arrival the receiver holds until the sender is dead


class SlowReceiver:
    """Answers each request after 20 ms, and holds arrival number HELD until `release`."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.receiver = Receiver(SECRET, self.answer)
        self.arrivals = 0
        self.held: Received | None = None
        self.cut = False  # the held request's connection closed under it

    async def answer(self, received: Received) -> Reply:
        self.arrivals += 1
        if self.arrivals == HELD:
            self._release, self._loop = asyncio.Event(), asyncio.get_running_loop()
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

    def release(self) -> None:
        """From the test's thread."""
        assert self._release is not None
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._release.set)


def test_a_killed_instance_loses_no_event_and_none_is_acknowledged_twice(
    database_url: str, serve: type[Server], threaded: Callable[[Receiver], Receiver]
) -> None:
    slow = SlowReceiver()
    receiver = threaded(slow.receiver)
    options = (
        "--database-url", database_url, "--ship-delay", "0.01", "--concurrency", "4",
        "--webhook", receiver.url, "--webhook-secret", SECRET, "--webhook-timeout", "2",
        "--webhook-allow-private",  # the receiver is on loopback
        "--webhook-retry-schedule", "0.2,0.5,1,2,4", "--lease-timeout", "1",
        "--heartbeat-interval", "0.3", "--poll-interval", "0.2",
    )  # fmt: skip
    instances = [serve(*options) for _ in range(2)]
    try:
        assert len(query(database_url, "SELECT id FROM webhooks")) == 1  # one for both
        for n in range(15):
            order = {"customer": f"c{n}", "items": [{"name": "W", "quantity": 1}]}
            assert instances[n % 2].request("POST", "/orders", json=order).status_code == 201
        assert instances[1].request("POST", "/orders/process").status_code == 202

        assert slow.holding.wait(30), "the receiver never got its held request"
        [row] = query(database_url, "SELECT owner FROM webhooks")
        pid = int(row["owner"].rsplit("-", 2)[1])  # host-pid-random#claim
        [victim] = [i for i in instances if i.process.pid == pid]
        [survivor] = [i for i in instances if i is not victim]
        victim.kill()  # SIGKILL, mid-delivery
        slow.release()  # answered to a sender that is gone: not acknowledged

        def all_delivered() -> bool:
            if query(database_url, "SELECT id FROM orders WHERE status <> 'shipped'"):
                return False
            [last] = query(database_url, "SELECT max(seq) AS seq FROM event_batches")
            [sub] = query(database_url, "SELECT cursor FROM webhooks")
            return last["seq"] is not None and sub["cursor"] == last["seq"]

        eventually_sync(all_delivered, timeout_s=60, interval_s=0.1)
        [last] = query(database_url, "SELECT max(seq) AS seq FROM event_batches")
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
        log = query(database_url, "SELECT DISTINCT outcome FROM webhook_deliveries")
        assert [r["outcome"] for r in log] == ["delivered"]
        assert survivor.stop() == 0
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                instance.kill()
