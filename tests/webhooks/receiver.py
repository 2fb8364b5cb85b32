"""Receiver: a real webhook receiver for the tests, an aiohttp server on a free loopback port.

It verifies every request with `standardwebhooks.Webhook(secret).verify` (a request that does
not verify fails the test), keeps every request it got, and answers what the test's `answer`
says (204 by default). It counts, per ``webhook-id``, the requests that came (`arrived`) and
the 2xx answers that reached a sender still there (`acked`): a sender that went away while
its request was being answered (killed mid-delivery) is not counted as acknowledged.

`ThreadedReceiver` runs one in a thread of its own, for tests that block (real processes).
`Names` resolves made-up names for the deliverer, so that no test asks a real DNS server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, as the spec's own example


@dataclass(frozen=True)
class Received:
    path: str
    webhook_id: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    at: float  # time.monotonic()
    sender_gone: Callable[[], bool]  # whether the sender's connection is closed now

    @property
    def seq(self) -> int:
        return int(self.webhook_id.removeprefix("evt_"))


Reply = tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]  # (status, headers, body?)
Answer = Callable[[Received], Awaitable[Reply]]


async def accept(_: Received) -> Reply:
    return 204, {}


class Receiver:
    def __init__(self, secret: str = SECRET, answer: Answer = accept) -> None:
        self.verifier = Webhook(secret)
        self.answer = answer
        self.received: list[Received] = []
        self.arrived: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self.acked_in_order: list[str] = []
        self.failures: list[str] = []  # requests that did not verify
        self.arrival = asyncio.Event()  # set at each arrival (tests clear it)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def url_for(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            body = self.verifier.verify(raw, headers)
        except Exception as exc:
            self.failures.append(f"{request.path}: {exc!r}")
            return web.Response(status=400, text="signature does not verify")
        webhook_id = request.headers["webhook-id"]
        transport = request.transport
        received = Received(
            request.path,
            webhook_id,
            headers,
            body,
            raw,
            time.monotonic(),
            lambda: transport is None or transport.is_closing(),
        )
        self.received.append(received)
        self.arrived[received.webhook_id] += 1
        self.arrival.set()
        status, reply_headers, *body = await self.answer(received)
        if 200 <= status < 300:
            if received.sender_gone():
                return web.Response(status=status)  # the sender went away: not acknowledged
            self.acked[received.webhook_id] += 1
            self.acked_in_order.append(received.webhook_id)
        return web.Response(status=status, headers=reply_headers, body=body[0] if body else None)

    def seqs_acked(self) -> list[int]:
        return [int(i.removeprefix("evt_")) for i in self.acked_in_order]


class ThreadedReceiver:
    """A Receiver served by an event loop in a thread of its own (start, then close)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(10)
        return self.receiver

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def order_json(order: Any) -> Any:
    """An order as the API shows it, as the body's `data` should hold it."""
    return json.loads(msgspec.json.encode(order))


class Names(AbstractResolver):
    """Resolves made-up names: `names[host]` is its addresses, or an exception to raise; any
    other name does not resolve. `asked` lists the names asked, in order."""

    def __init__(self, names: dict[str, Sequence[str] | Exception] | None = None) -> None:
        self.names = dict(names or {})
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        found = self.names.get(host)
        if found is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(found, Exception):
            raise found
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in found
        ]

    async def close(self) -> None:
        pass
