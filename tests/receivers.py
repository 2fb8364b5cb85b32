"""The receivers every suite sends to, each a real server on a free loopback port:

- `Receiver` speaks HTTP (aiohttp) and checks what it is sent: every request must verify with
  `standardwebhooks.Webhook(secret).verify` (one that does not is answered 400 and noted in
  `failures`); it keeps each request and answers what the test's `answer` says (204 by
  default). It counts, per ``webhook-id``, the requests that came (`arrived`) and the 2xx
  answers that reached a sender still there (`acked`): a sender that went away while its
  request was being answered (killed mid-delivery) is not counted as acknowledged.
- `RawReceiver` speaks raw bytes, to misbehave exactly as a test says: it reads each request
  (its head and its Content-Length body) and hands it to `respond`, which writes what it likes
  and says whether to read the next request on that connection.

Either runs in the test's own event loop (`await start()`, `await close()`), or, for tests that
block (real processes), in a thread of its own through `Threaded`. `Names` resolves made-up names
for the webhook deliverer, so that no test asks a real DNS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, as the spec's own example


@dataclass(frozen=True)
class Received:
    path: str
    webhook_id: str
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]
    raw: bytes
    at: float  # time.monotonic()
    sender_gone: Callable[[], bool]  # whether the sender's connection is closed now
    request: web.Request  # for an answer that writes its response itself

    @property
    def seq(self) -> int:
        return int(self.webhook_id.removeprefix("evt_"))


Reply = tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]  # (status, headers, body?)
# An answer returns a Reply, or a response it prepared and wrote itself (streamed, cut off).
Answer = Callable[[Received], Awaitable[Reply | web.StreamResponse]]


async def accept(_: Received) -> Reply:
    return 204, {}


def replying(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    """An answer that is always `status` with `body` and `headers`."""

    async def answer(_: Received) -> Reply:
        return status, dict(headers or {}), body

    return answer


class Receiver:
    """Args:
    secret: what every request must be signed with.
    answer: what to answer each request that verified (tests may change it at any time).
    ssl_context: serve https with it.
    cancel_on_disconnect: cancel an answer whose sender went away (aiohttp's
        handler_cancellation), so that `hang` sees the disconnect.
    """

    def __init__(
        self,
        secret: str = SECRET,
        answer: Answer = accept,
        *,
        ssl_context: ssl.SSLContext | None = None,
        cancel_on_disconnect: bool = False,
    ) -> None:
        self.verifier = Webhook(secret)
        self.answer = answer
        self.received: list[Received] = []
        self.arrived: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self.acked_in_order: list[str] = []
        self.failures: list[str] = []  # requests that did not verify
        self.arrival = asyncio.Event()  # set at each arrival (tests clear it)
        self.waiting = asyncio.Event()  # set once a request waits in `hang`
        self.release = asyncio.Event()  # ends every `hang`
        self.disconnected = asyncio.Event()  # set once a hanging request's sender went away
        self.port = 0
        self._ssl = ssl_context
        self._cancel_on_disconnect = cancel_on_disconnect
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return self.url_for("/hook")

    def url_for(self, path: str) -> str:
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=self._cancel_on_disconnect,
            shutdown_timeout=1,
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def hang(self, received: Received) -> Reply:
        """An answer that comes only once `release` is set."""
        self.waiting.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
        return 204, {}

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
            request,
        )
        self.received.append(received)
        self.arrived[received.webhook_id] += 1
        self.arrival.set()
        reply = await self.answer(received)
        if isinstance(reply, web.StreamResponse):
            status, response = reply.status, reply
        else:
            status, reply_headers, *content = reply
            response = web.Response(
                status=status, headers=reply_headers, body=content[0] if content else None
            )
        if 200 <= status < 300 and not received.sender_gone():  # else: not acknowledged
            self.acked[received.webhook_id] += 1
            self.acked_in_order.append(received.webhook_id)
        return response

    def seqs_acked(self) -> list[int]:
        return [int(i.removeprefix("evt_")) for i in self.acked_in_order]


# (request head, request body, reader, writer) -> whether to read the next request
Respond = Callable[[bytes, bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]

_LENGTH = re.compile(rb"(?im)^content-length: *(\d+)")
_WEBHOOK_ID = re.compile(rb"(?im)^webhook-id: *(\S+)")


def answering(raw: bytes, *, keep: bool = True) -> Respond:
    """Answer every request with `raw`; close the connection after it unless `keep`."""

    async def respond(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return respond


class RawReceiver:
    """Hands each request to `respond` (tests may change it at any time). A `respond` that meets
    the client gone (ConnectionError) ends the connection as a close by the client.

    What it saw: `connections` opened; `requests` (head, body), with the client's port of each
    in `peers`; `calls` per ``webhook-id``; `sent`, the bytes `send` wrote, per connection
    ended; `closes`, the client's port of each connection the client closed, in order.
    """

    def __init__(self, respond: Respond, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.port = 0
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.peers: list[int] = []
        self.calls: Counter[str] = Counter()
        self.sent: list[int] = []
        self.waiting = asyncio.Event()  # set once a request waits in `hang`
        self._closes: asyncio.Queue[int] = asyncio.Queue()
        self._ssl = ssl_context
        self._lock = threading.Lock()  # `calls` and `sent`, read from other threads
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._sending: dict[asyncio.StreamWriter, int] = {}

    @property
    def origin(self) -> str:
        return f"{'http' if self._ssl is None else 'https'}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + "/hook"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and end every connection."""
        if self._server is None:
            return
        self._server.close()
        # Each handler ends with its connection; cancelling them instead makes Python 3.11's
        # streams log an error.
        for writer in self._handlers:
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers.values(), timeout=10)
        await self._server.wait_closed()

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write `data`, counted in `sent`, and wait until the socket takes it (ConnectionError
        once the client went away)."""
        writer.write(data)
        self._sending[writer] = self._sending.get(writer, 0) + len(data)
        await writer.drain()

    async def hang(
        self, head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Never answer: wait until the client goes away."""
        self.waiting.set()
        with contextlib.suppress(ConnectionError):  # TLS: an abort can be a reset
            await reader.read()
        raise ConnectionError("the client went away")

    async def closed_by_client(self, connections: int = 1, timeout_s: float = 5) -> list[int]:
        """Wait until the client has closed this many connections (more); their client ports,
        in the order they closed."""
        async with asyncio.timeout(timeout_s):
            return [await self._closes.get() for _ in range(connections)]

    def answers_sent(self) -> list[int]:
        with self._lock:
            return list(self.sent)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[writer] = task
        self.connections += 1
        peer: int = writer.get_extra_info("peername")[1]
        by_client = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                body = await reader.readexactly(int(length[1]) if length else 0)
                webhook_id = _WEBHOOK_ID.search(head)
                with self._lock:
                    self.requests.append((head, body))
                    self.peers.append(peer)
                    self.calls[webhook_id[1].decode() if webhook_id else ""] += 1
                if not await self.respond(head, body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            by_client = True
        finally:
            with self._lock:
                self.sent.append(self._sending.pop(writer, 0))
            writer.close()
            del self._handlers[writer]
            if by_client:
                self._closes.put_nowait(peer)


class _Startable(Protocol):
    async def start(self) -> Any: ...

    async def close(self) -> None: ...


R = TypeVar("R", bound=_Startable)


class Threaded(Generic[R]):
    """A receiver served by an event loop in a thread of its own: `start()` returns it, then
    `close()`; `call(coroutine)` runs a coroutine in that loop."""

    def __init__(self, receiver: R) -> None:
        self.receiver = receiver
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> R:
        self._thread.start()
        self.call(self.receiver.start())
        return self.receiver

    def call(self, coroutine: Awaitable[Any], timeout_s: float = 30) -> Any:
        async def run() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout_s)

    def close(self) -> None:
        self.call(self.receiver.close())
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
