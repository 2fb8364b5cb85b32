"""Sender: one signed POST of one webhook message, and what the receiver answered. One aiohttp
client per process (pooled connections, no cookies), redirects never followed, connecting only
where `Destinations` allows; it never raises for what the network or the receiver did.

    2xx                        delivered (the body is read, but changes nothing)
    3xx                        not followed: a failure saying so
    other statuses             a failure "HTTP <status>: <the body's first 200 characters>",
                               with Retry-After
    timeout, connection error, a failure without a status
    refused destination,
    an answer past the bounds

What a receiver may send is bounded: the whole attempt by the timeout; the status line and
each header by MAX_LINE_BYTES, their number by MAX_HEADERS (so the header block by about
1 MiB); the body read by 4 KiB. Past a bound the attempt fails saying which, and the
connection is closed.
"""

from __future__ import annotations

import errno
import time
from datetime import datetime

import aiohttp
import msgspec
from aiohttp.http_exceptions import LineTooLong
from standardwebhooks import Webhook

from orderflow.signing import body_start, retry_after_s, signed_headers
from orderflow.webhooks.destinations import Destinations, RefusedDestination

_BODY_START_BYTES = 4096
MAX_LINE_BYTES = 8190  # the status line, or one header (aiohttp's default, as most servers')
MAX_HEADERS = 128  # headers in one answer (aiohttp's default)


class Answer(msgspec.Struct, frozen=True, gc=False):
    """What became of one POST: the status (None: no answer), why it failed (None: 2xx), the
    latency to the answer's headers (or the failure), and the receiver's Retry-After."""

    status_code: int | None
    error: str | None
    latency_ms: float
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """Its aiohttp session is opened on the first call (a session needs a running loop) and
    closed by `close`.

    Args:
        timeout_s: the most one attempt may take, connecting and reading included.
        destinations: where it may connect (its resolver and socket factory).
    """

    def __init__(self, *, timeout_s: float, destinations: Destinations) -> None:
        if not timeout_s > 0:
            raise ValueError(f"the webhook timeout must be more than 0 s, not {timeout_s}")
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._destinations = destinations
        self._session: aiohttp.ClientSession | None = None

    async def send(
        self,
        url: str,
        signer: Webhook,
        webhook_id: str,
        body: bytes,
        at: datetime,
        attempt: int,
    ) -> Answer:
        """POST `body` to `url`, signed by `signer` as message `webhook_id` sent at `at`
        (``webhook-timestamp``); ``orderflow-attempt`` says which attempt this is."""
        headers = signed_headers(signer, webhook_id, at, body)
        headers["orderflow-attempt"] = str(attempt)
        session = self._session if self._session is not None else self._open_session()
        began = time.perf_counter()
        try:
            # A cancellation here closes the connection: the receiver sees the call go away.
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as response:
                latency_ms = _ms(began)
                status = response.status
                retry_after = response.headers.get("retry-after")
                try:
                    start = await _read_start(response)
                except (aiohttp.ClientError, TimeoutError):
                    start = b""  # the status is the answer; a body that breaks off changes nothing
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            return Answer(None, f"timeout after {self.timeout_s:g}s", _ms(began))
        except aiohttp.ClientConnectorError as exc:
            return Answer(None, _connect_failure(exc), _ms(began))
        except aiohttp.ServerDisconnectedError:
            return Answer(None, "the receiver closed the connection without answering", _ms(began))
        except aiohttp.ClientResponseError as exc:  # its answer could not be read
            return Answer(None, _unreadable(exc), _ms(began))
        except aiohttp.ClientError as exc:
            reason = body_start(str(exc).encode()) or f": {type(exc).__name__}"
            return Answer(None, f"HTTP request failed{reason}", _ms(began))
        if 200 <= status < 300:
            return Answer(status, None, latency_ms)
        if 300 <= status < 400:
            return Answer(status, f"HTTP {status}: redirects are not followed", latency_ms)
        return Answer(
            status,
            f"HTTP {status}{body_start(start, len(start) < _BODY_START_BYTES)}",
            latency_ms,
            retry_after_s(retry_after),
        )

    async def close(self) -> None:
        """Close the connection pool, and the resolver it used."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        await self._destinations.close()

    def _open_session(self) -> aiohttp.ClientSession:
        destinations = self._destinations
        self._session = aiohttp.ClientSession(
            # No cap of its own: the deliverer's concurrency bounds the calls in flight.
            connector=aiohttp.TCPConnector(
                limit=0, resolver=destinations, socket_factory=destinations.open_socket
            ),
            # Each delivery is its own message: no cookie rides along with the next.
            cookie_jar=aiohttp.DummyCookieJar(),
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
        )
        return self._session


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


async def _read_start(response: aiohttp.ClientResponse) -> bytes:
    """The body's first bytes; a longer body is left unread (the connection is then closed
    rather than reused)."""
    data = bytearray()
    while len(data) < _BODY_START_BYTES and (
        chunk := await response.content.read(_BODY_START_BYTES - len(data))
    ):
        data += chunk
    return bytes(data)


def _connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc.os_error, RefusedDestination):
        return str(exc.os_error)
    where = f"{exc.host}:{exc.port}"
    if exc.os_error.errno == errno.ECONNREFUSED:
        return f"connection refused by {where}"
    detail = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
    return f"cannot connect to {where}: {detail}"


def _unreadable(exc: aiohttp.ClientResponseError) -> str:
    """Why the receiver's answer could not be read, in a line that quotes none of it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, LineTooLong):
            return f"the receiver's status line or a header is over {MAX_LINE_BYTES} bytes"
        cause = cause.__cause__
    if "too many headers" in exc.message.lower():
        return f"the receiver sent more than {MAX_HEADERS} headers"
    # The parser's words, without the bytes of the answer it quotes after them.
    words = exc.message.partition("\n")[0].removesuffix(":")
    return "the receiver's answer is not valid HTTP" + body_start(words.encode())
