"""What a receiver may answer, against the Sender: raw asyncio servers on loopback that send
exactly the bytes each test says (a huge header block, an endless one, a long line, too many
headers, a line that trickles, a body past what is kept, an answer that is not HTTP). Each
attempt ends within its bounds with a one-line reason quoting at most 200 characters of the
answer, and the connection is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from orderflow.webhooks.destinations import Destinations
from orderflow.webhooks.sender import MAX_HEADERS, MAX_LINE_BYTES, Answer, Sender
from tests.receivers import SECRET, Names, RawReceiver

Write = Callable[[asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Write], Awaitable[RawReceiver]]
CHUNK = 64 * 1024


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`await serve(write)`: a RawReceiver that answers each request with what `write` writes
    (counting it with `raw.send`), then waits for the sender to close the connection."""
    started: list[RawReceiver] = []

    async def start(write: Write) -> RawReceiver:
        async def respond(
            head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            await write(writer)
            return True  # read on: the next thing the sender does is close

        started.append(await RawReceiver(respond).start())
        return started[-1]

    yield start
    for raw in started:
        await raw.close()


async def post(raw: RawReceiver, timeout_s: float = 5.0) -> Answer:
    sender = Sender(timeout_s=timeout_s, destinations=Destinations(allow_private=True))
    try:
        return await sender.send(
            raw.url, Webhook(SECRET), "evt_1", b"{}",
            datetime.now(UTC), 1,
        )  # fmt: skip
    finally:
        await sender.close()


TOO_LONG = f"the receiver's status line or a header is over {MAX_LINE_BYTES} bytes"
TOO_MANY = f"the receiver sent more than {MAX_HEADERS} headers"


async def test_a_32_mb_header_block_is_cut_after_one_line(serve: Serve) -> None:
    async def huge(writer: asyncio.StreamWriter) -> None:
        await raw.send(writer, b"HTTP/1.1 200 OK\r\nX-Big: ")
        for _ in range((32 << 20) // CHUNK):
            await raw.send(writer, b"a" * CHUNK)

    raw = await serve(huge)
    answer = await post(raw)
    assert (answer.status_code, answer.error) == (None, TOO_LONG)
    await raw.closed_by_client()
    assert raw.answers_sent()[0] < 16 << 20  # it stopped reading: the rest never left the receiver


async def test_an_endless_header_stream_ends_at_the_header_count(serve: Serve) -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        await raw.send(writer, b"HTTP/1.1 200 OK\r\n")
        for n in range(1_000_000):  # bounded: ~14 MB, far past any bound
            await raw.send(writer, b"X-%d: v\r\n" % n)

    raw = await serve(endless)
    answer = await post(raw)
    assert (answer.status_code, answer.error) == (None, TOO_MANY)
    await raw.closed_by_client()
    assert raw.answers_sent()[0] < 8 << 20


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 9 * 1024 + b"\r\n\r\n", TOO_LONG),
        (b"HTTP/1.1 200 " + b"O" * 9 * 1024 + b"\r\n\r\n", TOO_LONG),
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(10_000)), TOO_MANY),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Many: v\r\n" * (MAX_HEADERS + 1) + b"\r\n", TOO_MANY),
    ],
    ids=["a 9 KB header", "a 9 KB status line", "10,000 headers", "one header too many"],
)
async def test_an_answer_past_a_bound_fails_saying_which(
    serve: Serve, head: bytes, reason: str
) -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        await raw.send(writer, head)

    raw = await serve(answer)
    assert (await post(raw)).error == reason
    await raw.closed_by_client()


async def test_answers_within_the_bounds_are_read(serve: Serve) -> None:
    head = b"HTTP/1.1 204 No Content\r\nX-Long: " + b"a" * 8000 + b"\r\n"
    head += b"X-Many: v\r\n" * (MAX_HEADERS - 2) + b"Content-Length: 0\r\n\r\n"

    async def answer(writer: asyncio.StreamWriter) -> None:
        await raw.send(writer, head)

    raw = await serve(answer)
    answer_ = await post(raw)
    assert (answer_.status_code, answer_.error) == (204, None)


async def test_a_header_that_trickles_forever_ends_at_the_timeout(serve: Serve) -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        await raw.send(writer, b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(100_000):  # bounded; a byte each 10 ms never reaches the line bound
            await raw.send(writer, b"a")
            await asyncio.sleep(0.01)

    raw = await serve(trickle)
    answer = await post(raw, timeout_s=0.5)
    assert (answer.status_code, answer.error) == (None, "timeout after 0.5s")
    await raw.closed_by_client()
    assert raw.answers_sent()[0] < MAX_LINE_BYTES


@pytest.mark.parametrize(
    ("head", "parser_says"),
    [
        (b"HTTP/1.1 2x0 " + b"Z" * 5000 + b"\r\n\r\n", "Bad status line"),
        (b"Z" * 5000 + b"\r\n\r\n", "Bad status line"),
        (b"HTTP/1.1 200 OK\r\n" + b"Z" * 5000 + b"\r\n\r\n", "Invalid header token"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 3000 + b"\r\n\r\n", "Content-Length"),
    ],
    ids=["status code", "no status line", "header", "content-length"],
)
async def test_an_answer_that_is_not_http_is_a_failure_that_quotes_none_of_it(
    serve: Serve, head: bytes, parser_says: str
) -> None:
    """The parser's message quoted the answer: 3,000 to 10,000 characters of it were stored
    in the deliveries log."""

    async def answer(writer: asyncio.StreamWriter) -> None:
        await raw.send(writer, head)

    raw = await serve(answer)
    error = (await post(raw)).error
    assert error is not None
    assert error.startswith("the receiver's answer is not valid HTTP: ")
    assert parser_says in error
    assert "ZZZ" not in error
    assert "999" not in error
    assert len(error) <= 41 + 201
    await raw.closed_by_client()


async def test_a_long_error_body_is_kept_to_its_first_200_characters(serve: Serve) -> None:
    body = "é" * 100 + "x" * 10_000

    async def answer(writer: asyncio.StreamWriter) -> None:
        data = body.encode()
        head = b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: %d\r\n\r\n" % len(data)
        await raw.send(writer, head + data)

    raw = await serve(answer)
    answer_ = await post(raw)
    assert answer_.status_code == 503
    assert answer_.error == "HTTP 503: " + body[:200] + "…"
    assert answer_.retry_after_s == 7.0


async def test_a_url_the_http_client_refuses_is_a_failure_saying_why() -> None:
    """As one stored before the rules could be: nothing is resolved or dialled."""
    sender = Sender(timeout_s=5.0, destinations=Destinations(resolver=Names()))
    try:
        answer = await sender.send(
            "http://1.2.3.4.5:9/hook", Webhook(SECRET), "evt_1", b"{}", datetime.now(UTC), 1
        )
    finally:
        await sender.close()
    assert answer.status_code is None
    assert answer.error == "HTTP request failed: 1.2.3.4.5 - is not a canonical IPv4 address"
