"""`HttpClient`: a small HTTP/1.1 client for orderflow's call-outs. It POSTs a body to one origin
over a pool of keep-alive connections and reads a bounded answer (httpconnection.py reads it,
with httptools, and draws the errors a call raises; they are importable from here too).

It exists for speed: the general clients spent 2 to 4 times its CPU per call. It deliberately
does only that: no other method, no redirects, proxies, HTTP/2, cookies, compression or
streaming. A bad origin, target or header is a ValueError (no CR, LF or NUL: no injection).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from orderflow.deadline import Deadlines
from orderflow.shippers.httpconnection import (
    CannotConnect,
    Connection,
    ConnectionClosed,
    HeadTooLarge,
    HttpClientError,
    ProtocolViolation,
    Reply,
    ReplyHeaders,
    Timeout,
)

__all__ = [
    "CannotConnect",
    "ConnectionClosed",
    "HeadTooLarge",
    "HttpClient",
    "HttpClientError",
    "ProtocolViolation",
    "Reply",
    "ReplyHeaders",
    "Timeout",
]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")
_TARGET = re.compile(r"/[!-~]*")
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class HttpClient:
    """POSTs to one origin over a pool of keep-alive connections.

    Args:
        origin: ``http://host[:port]`` or ``https://host[:port]``; nothing after it but ``/``.
        max_connections: the most connections open at once (None: no limit); a call waits for
            one, within its timeout.
        idle_timeout_s: an idle connection is closed after this long; below the 5 s after
            which common servers close theirs.
        ssl_context: for https, instead of ``ssl.create_default_context()`` (a private CA, say).

    `host` and `port` are where it connects; `authority` is what its requests' Host header says.

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
        self.host, self.port, self.authority, tls = _parse_origin(origin)
        if ssl_context is not None and not tls:
            raise ValueError(f"origin {origin!r}: an SSL context is for https:// only")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.idle_timeout_s = idle_timeout_s
        self._ssl = (ssl_context or ssl.create_default_context()) if tls else None
        self._host_line = f"host: {self.authority}\r\n"
        self._deadlines = Deadlines()
        self._slots = None if max_connections is None else asyncio.Semaphore(max_connections)
        self._idle: deque[Connection] = deque()  # oldest first; reused newest first
        self._busy: set[Connection] = set()
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
    ) -> Reply:
        """POST `body` to `target` (a path, with its query) with `headers`; the answer.

        `timeout_s` bounds the whole call: waiting for a connection, connecting, sending,
        reading; or, with `body_timeout_s`, the call up to the final answer's head, whose body
        then has `body_timeout_s` from that moment (or what was left of `timeout_s`, if
        longer). `on_head(status)` is called the moment the final head is in, in the parser's
        callback: no other task runs in between. On a timeout, a failure or a
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
        conn: Connection | None = None

        def body_due() -> float | None:  # asked only when timeout_s is over
            if conn is None or not conn.head_at or body_timeout_s is None:
                return None
            return conn.head_at + body_timeout_s

        deadline = self._deadlines.start(timeout_s, body_due)
        try:
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
        except asyncio.CancelledError:
            if not deadline.end():
                raise
            status = conn.status if conn is not None else 0
            if deadline.extended:
                message = f"timeout after {body_timeout_s:g}s reading the body"
            else:
                message = f"timeout after {round(timeout_s, 3)}s"
            raise Timeout(message, status=status or None) from None
        finally:
            deadline.end()

    @property
    def idle_connections(self) -> int:
        """How many idle connections are still open, ready for the next call."""
        return sum(not conn.lost and not conn.transport.is_closing() for conn in self._idle)

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

    def _reuse(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.lost and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        host = self.host if self._ssl is not None else None
        try:
            _, conn = await loop.create_connection(
                Connection, self.host, self.port, ssl=self._ssl, server_hostname=host
            )
        except OSError as exc:  # ssl.SSLError among them
            raise CannotConnect(_connect_failure(f"{self.host}:{self.port}", exc)) from exc
        return conn

    async def _exchange(
        self,
        conn: Connection,
        request: bytes,
        max_body: int,
        on_head: Callable[[int], None] | None,
    ) -> Reply:
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

    def _check_in(self, conn: Connection) -> None:
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
