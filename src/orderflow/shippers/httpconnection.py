"""`Connection`: one keep-alive HTTP/1.1 connection of `HttpClient` (httpclient.py). It writes
a request and reads its answer with httptools, within bounds on what a receiver may send, as
aiohttp's and nginx's defaults bound it: the status line and each header (name and value) at
most `MAX_LINE_BYTES`, at most `MAX_HEADERS` headers, every head up to the final answer's at most
`MAX_HEAD_BYTES` in all (not a byte past it is parsed), and a chunked body's framing and trailers
at most `MAX_HEAD_BYTES` too. Past a bound the call fails with `HeadTooLarge` and the connection
is closed. A body past the call's `max_body` is cut, and its connection closed, not drained.

    HttpClientError          the call failed; `status` is the answer's, if its head had arrived
     ├── CannotConnect       (ConnectionError) refused, no such host, unreachable, TLS refused
     ├── ConnectionClosed    (ConnectionError) closed or reset before the answer was complete
     ├── ProtocolViolation   the answer is not HTTP/1.1
     │    └── HeadTooLarge   "the answer's header block is over 64 KiB", and the like
     └── Timeout             (TimeoutError) "timeout after Xs"
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

import httptools

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


class ReplyHeaders(Mapping[str, str]):
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
        return f"ReplyHeaders({self._items!r})"


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer: its status, headers, and body (at most `max_body` bytes: `truncated` says
    there were more)."""

    status: int
    headers: ReplyHeaders
    body: bytes
    truncated: bool


class Connection(asyncio.Protocol):
    """One connection and the answer in progress on it; one request at a time."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport  # set by connection_made, before any use
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Reply] | None = None
        self.on_head: Callable[[int], None] | None = None
        self.max_body = 0
        self.status = 0  # of the final answer; 0 until its head is in
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.truncated = self.received = self.until_close = self.reusable = self.lost = False
        self.idle_since = 0.0
        self.head_at = 0.0  # the loop's time when the final head was in; 0 until then
        # What the bounds count: bytes of every head so far; of the status line and the headers
        # of the message being read; and, after the final head, bytes that were not body.
        self.head_bytes = self.status_bytes = self.header_count = 0
        self.framing_bytes = self.body_bytes = 0

    def send(
        self, request: bytes, max_body: int, on_head: Callable[[int], None] | None
    ) -> asyncio.Future[Reply]:
        self.max_body, self.status, self.body, self.on_head = max_body, 0, bytearray(), on_head
        self.truncated = self.received = self.until_close = self.reusable = False
        self.head_bytes = self.framing_bytes = self.body_bytes = 0
        self.head_at = 0.0
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
        self.headers = {}  # a new dict: a Reply already made keeps its own
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
            self.status, self.head_at = status, self.loop.time()
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
                Reply(self.status, ReplyHeaders(self.headers), body, self.truncated)
            )


def _kib(size: int) -> str:
    return f"{size // 1024} KiB"
