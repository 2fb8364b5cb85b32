"""Webhook deliveries per second from one instance (stores in memory) to a local receiver that
answers at once (a separate process, so that its CPU is not ours): one ordered subscription
(strictly one delivery at a time), and 16 subscriptions at once; CPU per delivery.

`python -m benchmarks.webhooks PORT` runs the receiver alone.
"""

from __future__ import annotations

import asyncio
import sys
import time

from benchmarks.fill import fill
from benchmarks.report import Row
from benchmarks.servers import free_port, server
from orderflow.clock import SystemClock
from orderflow.store.memory import InMemoryOrderStore
from orderflow.webhooks.delivery import Deliverer, DelivererSettings
from orderflow.webhooks.destinations import Destinations
from orderflow.webhooks.sender import Sender
from orderflow.webhooks.service import WebhookService
from orderflow.webhooks.store import InMemoryWebhookStore

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ONE = 5_000  # events delivered to the one subscription
MANY, EACH = 16, 1_000  # subscriptions, and the events each gets

_ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


class _Receiver(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for a client that sends Content-Length bodies:
    answers 204 to each request as soon as its body is in."""

    def __init__(self) -> None:
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.WriteTransport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = self._buffer[:end].lower()
            at = head.find(b"content-length:")
            length = 0 if at < 0 else int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self._buffer) < end + 4 + length:
                return
            self._buffer = self._buffer[end + 4 + length :]
            self._transport.write(_ANSWER)


def receive(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listening = await loop.create_server(_Receiver, "127.0.0.1", port, backlog=1024)
        await listening.serve_forever()

    uvloop.run(main())


async def _deliver(url: str, subscriptions: int, events: int) -> tuple[float, float, int]:
    """(wall s, cpu s, deliveries) to deliver `events` submitted orders to each of
    `subscriptions` subscriptions, from the first claim to the last cursor caught up."""
    orders = InMemoryOrderStore()
    await fill(orders, 0, events)
    webhooks = InMemoryWebhookStore()
    # The receiver is on loopback, where webhooks may go only when allowed.
    destinations = Destinations(allow_private=True)
    deliverer = Deliverer(
        orders,
        webhooks,
        Sender(timeout_s=10.0, destinations=destinations),
        DelivererSettings(concurrency=16, poll_s=0.05),
    )
    service = WebhookService(orders, webhooks, destinations, SystemClock())
    for n in range(subscriptions):
        subscription = await service.subscribe(f"{url}/hook/{n}", secret=SECRET)
        await webhooks.replay(subscription.id, 0)  # from the first event on
    wall, cpu = time.perf_counter(), time.process_time()
    await deliverer.start()
    for _ in range(600_000):  # bounded: 10 minutes
        listed = await webhooks.list_subscriptions()
        if all(s.cursor == events for s in listed):
            break
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await deliverer.stop()
    for subscription in await webhooks.list_subscriptions():
        assert subscription.cursor == events, "not every event was delivered"
        log = await webhooks.deliveries(subscription.id)
        assert {d.status_code for d in log} == {204}
    return wall, cpu, subscriptions * events


def run() -> list[Row]:
    import uvloop  # what `orderflow serve` runs on

    port = free_port()
    command = [sys.executable, "-m", "benchmarks.webhooks", str(port)]
    with server(command, port) as url:
        one_wall, _, one = uvloop.run(_deliver(url, 1, ONE))
        many_wall, many_cpu, many = uvloop.run(_deliver(url, MANY, EACH))
    return [
        Row("webhooks", "deliveries/s, 1 ordered subscription", one / one_wall, "/s"),
        Row("webhooks", f"deliveries/s, {MANY} subscriptions at once", many / many_wall, "/s"),
        Row("webhooks", f"CPU per delivery, {MANY} subscriptions", many_cpu / many * 1e6, "µs"),
    ]


if __name__ == "__main__":
    receive(int(sys.argv[1]))
