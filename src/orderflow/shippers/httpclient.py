"""`HttpClient`: a small HTTP/1.1 client for orderflow's call-outs. It POSTs a body to one origin
over a pool of keep-alive connections and reads a bounded answer; httptools parses it.

It exists for speed: the general clients spent 2 to 4 times its CPU per call. It deliberately
does only that: no other method, no redirects, proxies, HTTP/2, cookies, compression or
streaming. A body past `max_body` is cut, and its connection closed rather than drained.

What a receiver may send is bounded, as aiohttp's and nginx's defaults bound it: the status line
and each header (name and value) at most `MAX_LINE_BYTES`, at most `MAX_HEADERS` headers, every
head up to the final answer's at most `MAX_HEAD_BYTES` in all (nothing past it is parsed), and a
chunked body's framing and trailers at most `MAX_HEAD_BYTES` too. Past a bound the call fails
with `HeadTooLarge` and its connection is closed.

    HttpClientError          the call failed; `status` is the answer's, if its head had arrived
     ├── CannotConnect       (ConnectionError) refused, no such host, unreachable, TLS refused
     ├── ConnectionClosed    (ConnectionError) closed or reset before the answer was complete
     ├── ProtocolViolation   the answer is not HTTP/1.1
     │    └── HeadTooLarge   "the answer's header block is over 64 KiB", and the like
     └── Timeout             (TimeoutError) "timeout after Xs"
    ValueError               a bad origin, target or header (no CR, LF or NUL: no injection)
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")
_TARGET = re.compile(r"/[!-~]*")
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})

MAX_LINE_BYTES = 8192  # the status line; each header, its name and value together
MAX_HEADERS = 100  # in one answer, its trailers included
MAX_HEAD_BYTES = 65536  # every head until the final one; a chunked body's framing and trailers
_STATUS_START = len("HTTP/1.1 200 ")


class HttpClientError(Exception):
    """The call failed; `status` is the answer's status when its head had arrived, else None."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CannotConnect(HttpClientError, ConnectionError):
    """No connection: refused, no such host, unreachable, or the TLS handshake failed."""


class ConnectionClosed(HttpClientError, ConnectionError):
    """The connection closed or was reset before the answer was complete."""


class ProtocolViolation(HttpClientError):
    """The answer is not HTTP/1.1 this client can read."""


class HeadTooLarge(ProtocolViolation):
    """The answer's status line, a header, its count of headers, its header block, or a chunked
    body's framing and trailers, is over its bound; its connection was closed."""


class Timeout(HttpClientError, TimeoutError):
    """The call took longer than its `timeout_s` (its body longer than its `body_timeout_s`);
    its connection was closed."""


class Headers(Mapping[str, str]):
    """An answer's headers; names are case-insensitive, and a repeated header's values are
    joined by ", "."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items  # names lower-cased

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: its status, headers, and body (at most `max_body` bytes: `truncated` says
    there were more)."""

    status: int
    headers: Headers
    body: bytes
    truncated: bool


class _Connection(asyncio.Protocol):
    """One connection and the answer in progress on it; one request at a time."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport  # set by connection_made, before any use
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.on_head: Callable[[int], None] | None = None
        self.max_body = 0
        self.status = 0  # of the final answer; 0 until its head is in
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.truncated = self.received = self.until_close = self.reusable = self.lost = False
        self.idle_since = 0.0
        # What the bounds count: bytes of every head so far; of the status line and the headers
        # of the message being read; and, after the final head, bytes that were not body.
        self.head_bytes = self.status_bytes = self.header_count = 0
        self.framing_bytes = self.body_bytes = 0

    def send(
        self, request: bytes, max_body: int, on_head: Callable[[int], None] | None
    ) -> asyncio.Future[Response]:
        self.max_body, self.status, self.body, self.on_head = max_body, 0, bytearray(), on_head
        self.truncated = self.received = self.until_close = self.reusable = False
        self.head_bytes = self.framing_bytes = self.body_bytes = 0
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        self.transport.abort()

    def fail(self, exc: HttpClientError) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            exc.status = self.status or None
            self.waiter.set_exception(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # nothing asked: not ours to read
            self.abort()
            return
        self.received = True
        if self.status:
            self._feed_body(data)
            return
        # A head: not a byte past MAX_HEAD_BYTES is parsed, so a flood costs neither memory
        # nor time (httptools joins a header's pieces into one bytes).
        room = MAX_HEAD_BYTES - self.head_bytes
        self.head_bytes += len(data)
        if len(data) <= room:
            self._feed(data)
            return
        view = memoryview(data)
        self._feed(view[:room])
        if waiter.done():
            return
        if self.status:  # the final head ended within the bound: the rest follows it
            self._feed_body(view[room:])
            return
        self._refuse(HeadTooLarge(f"the answer's header block is over {_kib(MAX_HEAD_BYTES)}"))

    def _feed_body(self, data: bytes | memoryview) -> None:
        body_bytes = self.body_bytes
        self._feed(data)
        # Chunk framing and trailers (whose pieces httptools joins, as a header's).
        self.framing_bytes += len(data) - (self.body_bytes - body_bytes)
        if self.framing_bytes > MAX_HEAD_BYTES and self.waiter and not self.waiter.done():
            self._refuse(
                HeadTooLarge(
                    f"the answer's chunk framing and trailers are over {_kib(MAX_HEAD_BYTES)}"
                )
            )

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(ProtocolViolation("the receiver switched protocols"))
            self.abort()
        except httptools.HttpParserError as exc:  # a bound refused in a callback among them
            self.fail(ProtocolViolation(f"the answer is not HTTP/1.1: {exc}"))
            self.abort()

    def _refuse(self, exc: HeadTooLarge) -> None:
        self.fail(exc)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.reusable = True, False
        if self.waiter is None or self.waiter.done():
            return
        if self.status and self.until_close and exc is None:
            self._settle()  # the body ended with the connection, as its head said it would
            return
        how = "before its answer was complete" if self.received else "without answering"
        why = f" ({getattr(exc, 'strerror', None) or exc})" if exc else ""
        self.fail(ConnectionClosed(f"the receiver closed the connection {how}{why}"))

    def on_message_begin(self) -> None:
        self.headers = {}  # a new dict: a Response already made keeps its own
        self.status_bytes = self.header_count = 0
        if self.status:  # a second answer to one request
            self.abort()

    def on_status(self, reason: bytes) -> None:  # the reason phrase, maybe in pieces
        self.status_bytes += len(reason)
        if self.status_bytes > MAX_LINE_BYTES - _STATUS_START:
            self._stop(f"the answer's status line is over {_kib(MAX_LINE_BYTES)}")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > MAX_HEADERS:
            self._stop(f"the answer has over {MAX_HEADERS} headers")
        if len(name) + len(value) > MAX_LINE_BYTES:
            shown = name[:40].decode("latin-1")
            self._stop(f"the answer's header {shown!r} is over {_kib(MAX_LINE_BYTES)}")
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def _stop(self, reason: str) -> None:
        """Fail the call and stop the parser, from within one of its callbacks."""
        exc = HeadTooLarge(reason)
        self._refuse(exc)
        raise exc

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:
            self.fail(ProtocolViolation("the receiver switched protocols"))
        elif status >= 200:  # 1xx are interim (100 Continue, 103 Early Hints): skipped
            self.status = status
            self.until_close = "content-length" not in self.headers and (
                "chunked" not in self.headers.get("transfer-encoding", "").lower()
            )
            if self.on_head is not None:
                self.on_head(status)

    def on_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        # One byte more than max_body is kept: it tells a longer body from one that fits.
        room = self.max_body + 1 - len(self.body)
        if room > 0:
            self.body += chunk[:room] if len(chunk) > room else chunk
            if len(self.body) > self.max_body:
                self.truncated = True
                self._settle()

    def on_message_complete(self) -> None:
        if self.status and self.waiter is not None and not self.waiter.done():
            self.reusable = self.parser.should_keep_alive()
            self._settle()

    def _settle(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            body = bytes(self.body[: self.max_body] if self.truncated else self.body)
            self.waiter.set_result(
                Response(self.status, Headers(self.headers), body, self.truncated)
            )


class HttpClient:
    """POSTs to one origin over a pool of keep-alive connections.

    Args:
        origin: ``http://host[:port]`` or ``https://host[:port]``; nothing after it but ``/``.
        max_connections: the most connections open at once (None: no limit); a call waits for
            one, within its timeout.
        idle_timeout_s: an idle connection is closed after this long; below the 5 s after
            which common servers close theirs.
        ssl_context: for https, instead of ``ssl.create_default_context()`` (a private CA, say).

    Raises:
        ValueError: the origin is not one this client can call.
    """

    def __init__(
        self,
        origin: str,
        *,
        max_connections: int | None = 100,
        idle_timeout_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, authority, tls = _parse_origin(origin)
        if ssl_context is not None and not tls:
            raise ValueError(f"origin {origin!r}: an SSL context is for https:// only")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.idle_timeout_s = idle_timeout_s
        self._ssl = (ssl_context or ssl.create_default_context()) if tls else None
        self._host_line = f"host: {authority}\r\n"
        self._slots = None if max_connections is None else asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()  # oldest first; reused newest first
        self._busy: set[_Connection] = set()
        self._names: set[str] = set()  # header names checked already
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(
        self,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout_s: float,
        max_body: int,
        body_timeout_s: float | None = None,
        on_head: Callable[[int], None] | None = None,
    ) -> Response:
        """POST `body` to `target` (a path, with its query) with `headers`; the answer.

        `timeout_s` bounds the whole call: waiting for a connection, connecting, sending,
        reading; or, with `body_timeout_s`, the call up to the final answer's head, whose body
        then has `body_timeout_s` from that moment. `on_head(status)` is called the moment the
        final head is in, before any other task runs. On a timeout, a failure or a
        cancellation mid-call the connection is closed at once, so the receiver sees the call
        go away. A reused connection that closes before a byte of the answer (the receiver had
        closed it while idle) is replaced by a new one, once.

        Raises:
            HttpClientError: the call failed (the module docstring draws the subclasses).
            ValueError: a bad target or header.
            RuntimeError: the client is closed.
        """
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        request = self._frame(target, headers, body)
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout_s) as limit:
                if body_timeout_s is not None:
                    on_head = _then_body_timeout(limit, body_timeout_s, on_head)
                if self._slots is not None:
                    await self._slots.acquire()
                try:
                    conn = self._reuse()
                    if conn is not None:
                        try:
                            return await self._exchange(conn, request, max_body, on_head)
                        except ConnectionClosed:
                            # Not a byte came back, so the receiver took none of it.
                            if conn.received or self._closed:
                                raise
                    conn = await self._connect()
                    return await self._exchange(conn, request, max_body, on_head)
                finally:
                    if self._slots is not None:
                        self._slots.release()
        except TimeoutError:
            status = conn.status if conn is not None else 0
            if status and body_timeout_s is not None:
                message = f"timeout after {body_timeout_s:g}s reading the body"
            else:
                message = f"timeout after {round(timeout_s, 3)}s"
            raise Timeout(message, status=status or None) from None

    async def close(self) -> None:
        """Close every connection, idle or in flight (those calls raise ConnectionClosed)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        while self._idle:
            self._idle.pop().abort()
        for conn in self._busy:
            conn.fail(ConnectionClosed("the client was closed"))
            conn.abort()
        await asyncio.sleep(0)  # the transports finish closing

    def _frame(self, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
        if not _TARGET.fullmatch(target):
            raise ValueError(f"target {target!r}: expected a path from /, in printable ASCII")
        block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        # The check of every call, fast: names seen before, one CR and one LF a line, no NUL.
        n = len(headers)
        if not (
            self._names.issuperset(headers)
            and block.count("\n") == block.count("\r") == n
            and "\0" not in block
        ):
            _check_headers(headers)
            if len(self._names) < 100:
                self._names.update(headers)
        return (
            f"POST {target} HTTP/1.1\r\n{self._host_line}content-length: {len(body)}\r\n"
            f"connection: keep-alive\r\n{block}\r\n"
        ).encode("latin-1") + body

    def _reuse(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.lost and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host = self.host if self._ssl is not None else None
        try:
            _, conn = await loop.create_connection(
                _Connection, self.host, self.port, ssl=self._ssl, server_hostname=host
            )
        except OSError as exc:  # ssl.SSLError among them
            raise CannotConnect(_connect_failure(f"{self.host}:{self.port}", exc)) from exc
        return conn

    async def _exchange(
        self,
        conn: _Connection,
        request: bytes,
        max_body: int,
        on_head: Callable[[int], None] | None,
    ) -> Response:
        self._busy.add(conn)
        try:
            response = await conn.send(request, max_body, on_head)
        except BaseException:
            # A failure, timeout or cancel mid-call: the receiver must see the call go away,
            # and a connection with an answer half read is never used again.
            conn.abort()
            raise
        finally:
            self._busy.discard(conn)
        conn.waiter = None
        if conn.reusable and not self._closed:
            self._check_in(conn)
        else:
            conn.close()
        return response

    def _check_in(self, conn: _Connection) -> None:
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)
        if self._reaper is None:
            self._reaper = conn.loop.call_at(conn.idle_since + self.idle_timeout_s, self._reap)

    def _reap(self) -> None:
        idle, self._reaper = self._idle, None
        loop = asyncio.get_running_loop()
        expired = loop.time() - self.idle_timeout_s
        while idle and idle[0].idle_since <= expired:
            idle.popleft().close()
        if idle:
            self._reaper = loop.call_at(idle[0].idle_since + self.idle_timeout_s, self._reap)


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or name.lower() in _FRAMING:
            raise ValueError(f"header name {name!r}: not a token, or set by the client")
        if _BAD_VALUE.search(value):
            raise ValueError(f"header {name}: its value holds CR, LF or NUL")


def _parse_origin(origin: str) -> tuple[str, int, str, bool]:
    """(host, port, the Host header's value, is https) of `origin`."""
    problem = "expected http://host[:port] or https://host[:port]"
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"origin {origin!r}: {exc}") from None
    host = parts.hostname
    if parts.username is not None:  # not echoed: it holds a password
        raise ValueError("origin: user:password@ is not supported")
    if parts.scheme not in ("http", "https") or not host or parts.path not in ("", "/"):
        raise ValueError(f"origin {origin!r}: {problem}, and no path")
    if parts.query:
        raise ValueError(f"origin {origin!r}: {problem}, and no query")
    tls = parts.scheme == "https"
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != (443 if tls else 80):
        authority += f":{port}"
    return host, port or (443 if tls else 80), authority, tls


def _connect_failure(where: str, exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"cannot verify the certificate of {where}: {exc.verify_message or exc}"
    return f"cannot connect to {where}: {exc.strerror or exc}"


def _then_body_timeout(
    limit: asyncio.Timeout, body_timeout_s: float, on_head: Callable[[int], None] | None
) -> Callable[[int], None]:
    """An `on_head` that first moves the call's `limit` to `body_timeout_s` from now."""
    loop = asyncio.get_running_loop()

    def head_in(status: int) -> None:
        if not limit.expired():  # expired: its cancel is on the way already
            limit.reschedule(loop.time() + body_timeout_s)
        if on_head is not None:
            on_head(status)

    return head_in


def _kib(size: int) -> str:
    return f"{size // 1024} KiB"
