"""`orderflow serve --shipper http://…` against real local receivers: one that verifies every
signature with standardwebhooks' own verifier and answers a third of the calls 503 (every order
ends shipped with the receiver's result, reached the receiver at least once, and is recorded
shipped exactly once), and misbehaving ones that speak raw HTTP: a 2xx whose body never ends,
and an endless header block."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from orderflow.shipping import RESULT_WAIT_S
from tests.conftest import eventually_sync
from tests.helpers import http_client, submit
from tests.receivers import SECRET, RawReceiver, Received, Receiver, Reply
from tests.servers import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def flaky_receiver(threaded: Callable[[Receiver], Receiver]) -> Receiver:
    calls = itertools.count()

    async def answer(received: Received) -> Reply:
        if next(calls) % 3 == 2:
            return 503, {}, b"busy, try again"
        attempt = received.headers["orderflow-attempt"]
        result = {"tracking": "T-" + received.webhook_id, "attempt": attempt}
        return 200, {"content-type": "application/json"}, json.dumps(result).encode()

    return threaded(Receiver(answer=answer))


def test_a_thousand_orders_ship_through_a_receiver_that_fails_a_third_of_the_calls(
    serve: type[Server], flaky_receiver: Receiver
) -> None:
    server = serve(
        "--shipper", flaky_receiver.url, "--shipper-secret", SECRET,
        "--max-attempts", "20", "--retry-backoff", "0.01", "--auto-process",
    )  # fmt: skip
    ids = submit(server, 1000)
    with server.client() as client:

        def all_shipped() -> bool:
            stats = client.get("/orders/stats").json()
            assert stats["by_status"]["failed"] == 0, stats
            return bool(stats["by_status"]["shipped"] == len(ids))

        eventually_sync(all_shipped, timeout_s=60)
        orders = [client.get(f"/orders/{order_id}").json() for order_id in ids]
    assert not flaky_receiver.failures, flaky_receiver.failures[:3]
    retried = 0
    for order in orders:
        attempts = sorted(
            int(r.headers["orderflow-attempt"])
            for r in flaky_receiver.received
            if r.webhook_id == order["id"]
        )
        assert attempts == list(range(1, len(attempts) + 1))  # same webhook-id on every attempt
        retried += len(attempts) > 1
        assert flaky_receiver.acked[order["id"]] == 1
        assert order["shipment"] == {"tracking": "T-" + order["id"], "attempt": str(attempts[-1])}
        assert [h["status"] for h in order["history"]].count("shipped") == 1
    assert retried >= 300  # a third of the calls failed, so about a third of the orders retried
    assert len(flaky_receiver.received) >= len(ids) + retried


# What a misbehaving receiver writes (through `receiver.send`, which counts the bytes).
Write = Callable[[RawReceiver, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def raw_receiver(threaded: Callable[[RawReceiver], RawReceiver]) -> Callable[[Write], RawReceiver]:
    """`raw_receiver(write)` starts a RawReceiver that answers each request with what `write`
    writes, then closes the connection."""

    def start(write: Write) -> RawReceiver:
        async def respond(
            head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            await write(receiver, writer)
            return False

        receiver = RawReceiver(respond)
        return threaded(receiver)

    return start


async def _drip_body(receiver: RawReceiver, writer: asyncio.StreamWriter) -> None:
    await receiver.send(writer, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    await receiver.send(writer, b"content-length: 100\r\n\r\n{")
    for _ in range(99):
        await asyncio.sleep(1)
        await receiver.send(writer, b" ")


async def _endless_chunked_body(receiver: RawReceiver, writer: asyncio.StreamWriter) -> None:
    await receiver.send(writer, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(600):  # bounded: 5 minutes
        await receiver.send(writer, b"1\r\n \r\n")
        await asyncio.sleep(0.5)


async def _endless_unframed_body(receiver: RawReceiver, writer: asyncio.StreamWriter) -> None:
    await receiver.send(writer, b"HTTP/1.1 200 OK\r\n\r\n")
    for _ in range(600):  # bounded: 5 minutes
        await receiver.send(writer, b" ")
        await asyncio.sleep(0.5)


@pytest.mark.parametrize(
    "answer",
    [_drip_body, _endless_chunked_body, _endless_unframed_body],
    ids=["body-one-byte-a-second", "endless-chunked-body", "endless-body-without-a-length"],
)
def test_a_2xx_whose_body_never_ends_is_shipped_once_and_called_once(
    serve: type[Server], raw_receiver: Callable[[Write], RawReceiver], answer: Write
) -> None:
    """Regression: the attempt's deadline (3 s) cut off the 2xx's body, so the attempt failed
    ("timeout"), the order was posted again and failed: the receiver was called twice and
    answered 200 twice. Now the 2xx head marks the order taken; its body is read for
    RESULT_WAIT_S, then the order ships with no result and one warning line."""
    receiver = raw_receiver(answer)
    server = serve(
        "--shipper", receiver.url, "--shipper-secret", SECRET, "--auto-process",
        "--process-timeout", "3", "--max-attempts", "2", "--retry-backoff", "0.01",
    )  # fmt: skip
    ids = submit(server, 3, threads=3)
    with server.client() as client:

        def all_done() -> list[dict[str, object]] | None:
            orders = [client.get(f"/orders/{order_id}").json() for order_id in ids]
            done = all(order["status"] in ("shipped", "failed") for order in orders)
            return orders if done else None

        orders = eventually_sync(all_done, timeout_s=3 + RESULT_WAIT_S + 30)
    for order in orders:
        assert order["status"] == "shipped", order["history"]
        assert order["shipment"] is None
        assert [entry["status"] for entry in order["history"]] == [
            "pending",
            "processing",
            "shipped",
        ]
        assert receiver.calls[str(order["id"])] == 1
    warning = (
        f"then its body failed (timeout after {RESULT_WAIT_S:g}s reading the body):"
        " shipped, no result stored"
    )
    assert server.output().count(warning) == len(ids)


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def _endless_header(receiver: RawReceiver, writer: asyncio.StreamWriter) -> None:
    await receiver.send(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-flood: ")
    piece = b"a" * 65536
    for _ in range(100_000):  # bounded: 6.5 GB
        await receiver.send(writer, piece)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_an_endless_header_fails_each_attempt_at_the_bound_and_the_service_stays_up(
    serve: type[Server], raw_receiver: Callable[[Write], RawReceiver]
) -> None:
    """Regression: the answer's head was read without limit. A receiver streaming an endless
    header block was read until the deadline (hundreds of MB of RSS, kept), httptools' and
    on_header's joins blocked the event loop for seconds (/healthz took up to 3.8 s), and each
    attempt took far longer than its deadline. Now the head stops at 64 KiB: the attempt fails
    with that reason, the connection is closed, and the service answers meanwhile."""
    receiver = raw_receiver(_endless_header)
    server = serve(
        "--shipper", receiver.url, "--shipper-secret", SECRET, "--auto-process",
        "--process-timeout", "3", "--max-attempts", "2", "--retry-backoff", "0.01",
        "--log-level", "warning",
    )  # fmt: skip
    pid = server.process.pid
    rss_before = _rss_kib(pid, "VmRSS")
    health: list[int] = []
    stop = threading.Event()

    def poll_health() -> None:
        with http_client(server.url, timeout_s=10) as client:
            while not stop.is_set():
                health.append(client.get("/healthz").status_code)
                time.sleep(0.02)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        ids = submit(server, 20, threads=4)
        with server.client() as client:

            def all_failed() -> list[dict[str, object]] | None:
                orders = [client.get(f"/orders/{order_id}").json() for order_id in ids]
                return orders if all(o["status"] == "failed" for o in orders) else None

            orders = eventually_sync(all_failed, timeout_s=60)
    finally:
        stop.set()
        poller.join(30)
    reason = "the answer's header block is over 64 KiB"
    for order in orders:
        history = order["history"]
        assert isinstance(history, list)
        assert history[-1]["reason"] == reason
        assert history[-2]["reason"].startswith(f"attempt 1 of 2 failed ({reason}); retrying")
        assert receiver.calls[str(order["id"])] == 2
    assert health, "/healthz was never asked"
    assert set(health) == {200}
    sent = receiver.answers_sent()
    assert len(sent) == 2 * len(ids)
    # What the service did not read stayed in the sockets' buffers: a few MB at most, where
    # reading on to the deadline took hundreds of MB or more.
    assert max(sent) < 32 * 2**20, sent
    assert _rss_kib(pid, "VmHWM") - rss_before < 64 * 1024
