"""HttpClient against real servers on 127.0.0.1: asyncio servers that answer in raw bytes, so
that each test says exactly what goes over the wire."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orderflow.shippers.httpclient import (
    CannotConnect,
    ConnectionClosed,
    HeadTooLarge,
    HttpClient,
    ProtocolViolation,
    Timeout,
)
from tests.conftest import eventually
from tests.helpers import free_port, self_signed
from tests.receivers import RawReceiver, Respond, answering

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEADERS = {"content-type": "application/json"}


@pytest.fixture
async def server() -> AsyncIterator[RawReceiver]:
    server = await RawReceiver(answering(OK)).start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def client(server: RawReceiver) -> AsyncIterator[HttpClient]:
    client = HttpClient(server.origin)
    try:
        yield client
    finally:
        await client.close()


async def post(client: HttpClient, timeout_s: float = 5, max_body: int = 1000) -> bytes:
    response = await client.post("/hook", HEADERS, b"{}", timeout_s=timeout_s, max_body=max_body)
    return response.body


# Framing


async def test_a_request_is_framed_as_http_1_1_with_its_headers_and_body(
    server: RawReceiver, client: HttpClient
) -> None:
    headers = {"Content-Type": "application/json", "webhook-id": "order_1"}
    response = await client.post(
        "/hooks/orders?shop=1", headers, b'{"id":1}', timeout_s=5, max_body=100
    )
    assert (response.status, response.body, response.truncated) == (200, b"ok", False)
    head, body = server.requests[0]
    assert head == (
        b"POST /hooks/orders?shop=1 HTTP/1.1\r\n"
        + f"host: 127.0.0.1:{server.port}\r\n".encode()
        + b"content-length: 8\r\nconnection: keep-alive\r\n"
        b"Content-Type: application/json\r\nwebhook-id: order_1\r\n\r\n"
    )
    assert body == b'{"id":1}'


@pytest.mark.parametrize(
    "headers",
    [
        {"x-a": "1\r\nx-b: 2"},
        {"x-a": "1\nx-b: 2"},
        {"x-a": "1\0"},
        {"x-a\r\nx-b": "2"},
        {"x-a: 1\r\nx-b": "2"},
        {"x a": "1"},
        {"": "1"},
        {"Host": "elsewhere"},
        {"content-length": "1"},
        {"Transfer-Encoding": "chunked"},
        {"connection": "close"},
    ],
)
async def test_header_injection_and_framing_headers_are_refused(
    server: RawReceiver, client: HttpClient, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="header"):
        await client.post("/", headers, b"", timeout_s=5, max_body=10)
    assert server.connections == 0


@pytest.mark.parametrize("value", ["1\r\nx-b: 2", "1\nx-b: 2", "1\rx", "1\0"])
async def test_a_bad_value_is_refused_under_a_name_sent_before(
    server: RawReceiver, client: HttpClient, value: str
) -> None:
    await client.post("/", {"x-a": "1", "x-c": "3"}, b"", timeout_s=5, max_body=10)
    with pytest.raises(ValueError, match="header x-c: its value holds CR, LF or NUL"):
        await client.post("/", {"x-a": "1", "x-c": value}, b"", timeout_s=5, max_body=10)
    assert len(server.requests) == 1


@pytest.mark.parametrize("target", ["", "hook", "/a b", "/a\r\nx-b: 1", "/é", "/a\0"])
async def test_a_target_that_is_not_a_printable_path_is_refused(
    server: RawReceiver, client: HttpClient, target: str
) -> None:
    with pytest.raises(ValueError, match="target"):
        await client.post(target, {}, b"", timeout_s=5, max_body=10)
    assert server.connections == 0


@pytest.mark.parametrize(
    ("origin", "host", "port", "authority"),
    [
        ("http://example.test", "example.test", 80, "example.test"),
        ("http://Example.TEST:80/", "example.test", 80, "example.test"),
        ("https://example.test", "example.test", 443, "example.test"),
        ("https://example.test:8443", "example.test", 8443, "example.test:8443"),
        ("http://[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("http://bücher.test", "xn--bcher-kva.test", 80, "xn--bcher-kva.test"),
    ],
)
def test_an_origin_gives_the_host_port_and_host_header(
    origin: str, host: str, port: int, authority: str
) -> None:
    """The Host line is the authority: see the request framed on the wire above."""
    client = HttpClient(origin)
    assert (client.host, client.port, client.authority) == (host, port, authority)


@pytest.mark.parametrize(
    "origin",
    [
        "ftp://example.test",
        "example.test",
        "http://",
        "http://example.test/hooks",
        "http://example.test?x=1",
        "http://user:secret@example.test",
        "http://example.test:99999",
    ],
)
def test_an_origin_that_is_not_scheme_host_port_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="origin") as caught:
        HttpClient(origin)
    assert "secret" not in str(caught.value)


# Answers


async def test_headers_are_case_insensitive_and_repeats_are_joined(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(
        b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nX-Tag: a\r\nx-tag: b\r\nContent-Length: 0\r\n\r\n"
    )
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert response.status == 503
    assert response.headers.get("retry-after") == response.headers["RETRY-AFTER"] == "2"
    assert response.headers["X-Tag"] == "a, b"
    assert "x-tag" in response.headers
    assert response.headers.get("missing") is None


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert await post(client) == b"hello world"
    assert await post(client) == b"hello world"
    assert server.connections == 1


async def test_a_body_that_ends_at_close_is_read_and_its_connection_not_reused(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", keep=False)
    assert await post(client) == b"until the end"
    assert await post(client) == b"until the end"
    assert server.connections == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_an_answer_that_ends_the_connection_is_honoured(
    server: RawReceiver, client: HttpClient, raw: bytes
) -> None:
    """The server keeps the socket open: the client must close it, not reuse it."""
    server.respond = answering(raw)
    assert await post(client) == b"ok"
    assert await post(client) == b"ok"
    assert server.connections == 2
    await server.closed_by_client()


async def test_interim_1xx_answers_are_skipped(server: RawReceiver, client: HttpClient) -> None:
    server.respond = answering(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
    )
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert (response.status, response.body) == (201, b"done")
    assert "link" not in response.headers
    assert await post(client) == b"done"
    assert server.connections == 1


async def test_a_switch_of_protocols_is_a_protocol_violation(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(
        b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
    )
    with pytest.raises(ProtocolViolation, match="switched protocols"):
        await post(client)


async def test_an_answer_that_is_not_http_is_a_protocol_violation_and_closes(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(ProtocolViolation, match=r"not HTTP/1\.1"):
        await post(client)
    await server.closed_by_client()


@pytest.mark.parametrize(
    ("size", "truncated"), [(9, False), (10, False), (11, True), (100_000, True)]
)
async def test_a_body_is_kept_up_to_max_body(
    server: RawReceiver, client: HttpClient, size: int, truncated: bool
) -> None:
    server.respond = answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    )
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert response.body == b"x" * min(size, 10)
    assert response.truncated is truncated


async def test_a_truncated_answer_closes_its_connection(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert response.truncated
    await server.closed_by_client()
    await post(client)
    assert server.connections == 2


# Connections


async def test_one_connection_serves_many_calls_in_turn(
    server: RawReceiver, client: HttpClient
) -> None:
    for _ in range(20):
        assert await post(client) == b"ok"
    assert server.connections == 1
    assert len(server.requests) == 20


async def test_calls_at_once_open_one_connection_each_then_reuse_them(
    server: RawReceiver, client: HttpClient
) -> None:
    await asyncio.gather(*(post(client) for _ in range(5)))
    assert server.connections <= 5
    opened = server.connections
    await asyncio.gather(*(post(client) for _ in range(5)))
    assert server.connections == opened


async def test_a_connection_the_server_closed_is_not_reused(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(OK, keep=False)
    await post(client)
    await eventually(lambda: client.idle_connections == 0)  # it saw the close while idle
    await post(client)
    assert server.connections == 2
    assert len(server.requests) == 2


async def test_a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one(
    server: RawReceiver, client: HttpClient
) -> None:
    """The server closes an idle connection just as the next request goes out on it."""
    calls = 0

    async def first_then_drop(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            return False  # read the request, close without a byte
        writer.write(OK)
        return True

    server.respond = first_then_drop
    await post(client)
    assert await post(client) == b"ok"
    assert (server.connections, calls) == (2, 3)


async def test_a_new_connection_closed_before_answering_is_not_retried(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(b"", keep=False)
    with pytest.raises(ConnectionClosed, match="closed the connection without answering"):
        await post(client)
    assert len(server.requests) == 1


async def test_a_reset_connection_is_a_connection_closed(
    server: RawReceiver, client: HttpClient
) -> None:
    async def reset(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False  # closing with a zero linger sends a reset

    server.respond = reset
    with pytest.raises(ConnectionClosed, match="without answering") as caught:
        await post(client)
    assert str(caught.value).endswith("(Connection reset by peer)")
    assert isinstance(caught.value, ConnectionError)


async def test_a_reused_connection_that_closes_again_on_retry_fails(
    server: RawReceiver, client: HttpClient
) -> None:
    await post(client)
    server.respond = answering(b"", keep=False)
    with pytest.raises(ConnectionClosed, match="without answering") as caught:
        await post(client)
    assert caught.value.status is None
    assert len(server.requests) == 3  # the first call, then the second one twice


async def test_a_reused_connection_closed_mid_answer_is_not_retried(
    server: RawReceiver, client: HttpClient
) -> None:
    await post(client)
    server.respond = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart", keep=False)
    with pytest.raises(ConnectionClosed, match="before its answer was complete") as caught:
        await post(client)
    assert caught.value.status == 200
    assert len(server.requests) == 2


async def test_an_idle_connection_is_closed_after_idle_timeout_s(server: RawReceiver) -> None:
    client = HttpClient(server.origin, idle_timeout_s=0.05)
    try:
        await post(client)
        async with asyncio.timeout(5):
            await server.closed_by_client()
        await post(client)
        assert server.connections == 2
    finally:
        await client.close()


async def test_data_the_client_did_not_ask_for_closes_the_connection(
    server: RawReceiver, client: HttpClient
) -> None:
    async def ok_then_more(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        server.respond = answering(OK)  # the next connection is answered plainly
        writer.write(OK)
        await eventually(lambda: client.idle_connections == 1)  # the answer is in, and done
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        return True

    server.respond = ok_then_more
    await post(client)
    async with asyncio.timeout(5):
        await server.closed_by_client()
    assert await post(client) == b"ok"
    assert server.connections == 2


async def test_an_answer_followed_by_another_closes_the_connection(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = answering(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert await post(client) == b"ok"
    await server.closed_by_client()
    assert await post(client) == b"ok"
    assert server.connections == 2


async def test_idle_connections_expire_oldest_first(server: RawReceiver) -> None:
    """Calls go on the newest idle connection, again and again until the other one, idle all
    along, expires: the order of the closes shows it, not the clock."""
    client = HttpClient(server.origin, idle_timeout_s=0.4)
    try:
        await asyncio.gather(post(client), post(client))
        assert server.connections == 2
        await post(client)  # on the newest: it is idle again from now on
        newest = server.peers[-1]
        [older] = set(server.peers) - {newest}
        closing = asyncio.ensure_future(server.closed_by_client())
        while not closing.done():
            await post(client)
            assert server.peers[-1] == newest
            await asyncio.sleep(0.01)  # pacing the calls: nothing is waited for
        assert await closing == [older]
        await post(client)
        assert server.connections == 2
        assert await server.closed_by_client() == [newest]
    finally:
        await client.close()


async def test_max_connections_bounds_the_connections_open(server: RawReceiver) -> None:
    release, two_in = asyncio.Event(), asyncio.Event()

    async def held(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if len(server.requests) == 2:
            two_in.set()
        await release.wait()
        writer.write(OK)
        return True

    server.respond = held
    client = HttpClient(server.origin, max_connections=2)
    try:
        calls = [asyncio.create_task(post(client)) for _ in range(6)]
        await two_in.wait()
        await asyncio.sleep(0.05)  # room for a third connection, were there one
        assert (server.connections, len(server.requests)) == (2, 2)
        release.set()
        assert await asyncio.gather(*calls) == [b"ok"] * 6
        assert server.connections == 2
    finally:
        await client.close()


async def test_waiting_for_a_connection_counts_in_the_timeout(server: RawReceiver) -> None:
    server.respond = server.hang
    client = HttpClient(server.origin, max_connections=1)
    try:
        hung = asyncio.create_task(post(client))
        await server.waiting.wait()
        with pytest.raises(Timeout, match=r"^timeout after 0\.1s$"):
            await post(client, timeout_s=0.1)
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
    finally:
        await client.close()


# Failures, timeouts, cancellation


async def test_a_refused_connection_says_so() -> None:
    port = free_port()  # nobody listens on it
    client = HttpClient(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(CannotConnect, match=f"^connection refused by 127.0.0.1:{port}$"):
            await post(client)
    finally:
        await client.close()


async def test_a_server_that_never_answers_times_out_and_is_disconnected(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = server.hang
    async with asyncio.timeout(5):
        with pytest.raises(Timeout, match=r"^timeout after 0\.2s$") as caught:
            await post(client, timeout_s=0.2)
        await server.closed_by_client()
    assert caught.value.status is None
    assert isinstance(caught.value, TimeoutError)


async def test_a_connect_that_never_completes_times_out() -> None:
    """A listener whose backlog is full drops the SYN: the connect itself hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            client = HttpClient(f"http://127.0.0.1:{listener.getsockname()[1]}")
            try:
                with pytest.raises(Timeout, match=r"^timeout after 0\.2s$"):
                    await post(client, timeout_s=0.2)
            finally:
                await client.close()
        finally:
            for filler in fillers:
                filler.close()


async def test_a_timeout_after_the_head_carries_the_status(
    server: RawReceiver, client: HttpClient
) -> None:
    async def stall(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\npart")
        return await server.hang(head, body, reader, writer)

    server.respond = stall
    with pytest.raises(Timeout) as caught:
        await post(client, timeout_s=0.2)
    assert caught.value.status == 201
    await server.closed_by_client()


async def test_cancelling_a_call_closes_its_connection(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = server.hang
    call = asyncio.create_task(post(client))
    async with asyncio.timeout(5):
        await server.waiting.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await server.closed_by_client()


async def test_close_ends_idle_and_busy_connections(server: RawReceiver) -> None:
    client = HttpClient(server.origin)
    await asyncio.gather(post(client), post(client))  # two connections, idle
    server.respond = server.hang
    call = asyncio.create_task(post(client))  # one of them busy
    await server.waiting.wait()
    assert server.connections == 2
    await client.close()
    with pytest.raises(ConnectionClosed, match="the client was closed"):
        await call
    await server.closed_by_client(2)
    with pytest.raises(RuntimeError, match="closed"):
        await post(client)


# TLS


async def test_https_verifies_the_certificate_against_the_given_context(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = await RawReceiver(answering(OK), ssl_context=server_side).start()
    trusting = HttpClient(server.origin, ssl_context=ssl.create_default_context(cafile=cert))
    default = HttpClient(server.origin)
    try:
        assert await post(trusting) == b"ok"
        assert await post(trusting) == b"ok"
        assert server.connections == 1
        with pytest.raises(CannotConnect, match=r"^cannot verify the certificate of .*: self-"):
            await post(default)
        server.respond = server.hang
        with pytest.raises(Timeout):
            await post(trusting, timeout_s=0.2)
        await server.closed_by_client()
    finally:
        await trusting.close()
        await default.close()
        await server.close()


async def test_a_host_that_does_not_resolve_cannot_be_connected_to() -> None:
    client = HttpClient("http://no-such-host.invalid")
    try:
        with pytest.raises(CannotConnect, match=r"^cannot connect to no-such-host\.invalid:80: "):
            await post(client)
    finally:
        await client.close()


def test_max_connections_below_1_is_refused() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        HttpClient("http://example.test", max_connections=0)


def test_an_ssl_context_for_plain_http_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        HttpClient("http://example.test", ssl_context=ssl.create_default_context())


# Bounds on what a receiver may send


def endless(server: RawReceiver, start: bytes, piece: bytes) -> Respond:
    """Write `start`, then `piece` over and over until the client goes away (a close by the
    client); `server.answers_sent()` gets the bytes written."""

    async def respond(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        await server.send(writer, start)
        for _ in range(100_000):  # bounded: 6 GB at most
            await server.send(writer, piece)
        return False

    return respond


@pytest.mark.parametrize(
    ("start", "piece", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\nx-flood: ", b"a" * 65536, "the answer's header block is over 64 KiB"),
        (b"HTTP/1.1 200 OK\r\n", b"x-h: 1\r\n" * 8192, "the answer has over 100 headers"),
        (b"HTTP/1.1 200 OK\r\n", b"x-h: " + b"a" * 4090 + b"\r\n", "header block is over 64 KiB"),
        (b"HTTP/1.1 200 ", b"O" * 65536, "the answer's status line is over 8 KiB"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Hints\r\n\r\n" * 3000, "over 64 KiB"),
    ],
    ids=["one-endless-header", "endless-small-headers", "endless-4k-headers", "status", "1xx"],
)
async def test_an_endless_head_fails_at_its_bound_and_closes_the_connection(
    server: RawReceiver, client: HttpClient, start: bytes, piece: bytes, problem: str
) -> None:
    """Regression: a receiver that streamed an endless header block was read (and joined, in
    httptools and in on_header) until the timeout: RSS grew by hundreds of MB and the event loop
    blocked for seconds."""
    server.respond = endless(server, start, piece)
    async with asyncio.timeout(30):
        with pytest.raises(HeadTooLarge, match=f"{problem}$") as caught:
            await post(client, timeout_s=60)
        await server.closed_by_client()
    assert isinstance(caught.value, ProtocolViolation)
    assert caught.value.status is None  # no head of a final answer was read
    assert (
        server.answers_sent()[0] < 64 * 2**20
    )  # it stopped reading: what was sent is the sockets' buffers


async def test_a_32_mb_header_block_fails_at_its_bound(
    server: RawReceiver, client: HttpClient
) -> None:
    header = b"x-h: " + b"a" * 8000 + b"\r\n"
    server.respond = answering(
        b"HTTP/1.1 200 OK\r\n" + header * 4096 + b"Content-Length: 2\r\n\r\nok", keep=False
    )
    with pytest.raises(HeadTooLarge, match=r"the answer's header block is over 64 KiB$"):
        await post(client, timeout_s=60)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"HTTP/1.1 200 " + b"O" * 8180 + b"\r\n", "the answer's status line is over 8 KiB"),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 9000 + b"\r\n", "header 'x-big' is over 8 KiB"),
        (b"HTTP/1.1 200 OK\r\n" + b"x-h: 1\r\n" * 101, "the answer has over 100 headers"),
        (b"HTTP/1.1 503 Busy\r\n" + b"x-h: 1\r\n" * 10_000, "the answer has over 100 headers"),
    ],
    ids=["status-line", "9k-header", "101-headers", "10000-headers"],
)
async def test_a_head_over_a_bound_fails_and_closes_the_connection(
    server: RawReceiver, client: HttpClient, raw: bytes, problem: str
) -> None:
    server.respond = answering(raw + b"Content-Length: 2\r\n\r\nok")
    with pytest.raises(HeadTooLarge, match=f"{problem}$"):
        await post(client)
    await server.closed_by_client()


async def test_a_head_within_every_bound_is_read(server: RawReceiver, client: HttpClient) -> None:
    """At the bounds, not past them: a status line of 8 KiB, a header of 8 KiB, 100 headers,
    and repeated names."""
    status_line = b"HTTP/1.1 200 " + b"O" * (8192 - 13)
    headers = b"".join(b"x-h: %s\r\n" % (b"a" * 395) for _ in range(98))
    big = b"x-big: " + b"b" * (8192 - 5 - 2) + b"\r\n"
    raw = status_line + b"\r\n" + headers + big + b"Content-Length: 2\r\n\r\nok"
    assert len(raw) < 65536
    server.respond = answering(raw)
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert (response.status, response.body) == (200, b"ok")
    assert response.headers["x-h"] == ", ".join(["a" * 395] * 98)
    assert len(response.headers["x-big"]) == 8192 - 7
    assert await post(client) == b"ok"
    assert server.connections == 1


async def test_a_head_split_across_reads_counts_as_one(
    server: RawReceiver, client: HttpClient
) -> None:
    """The bounds count the head, not the reads: the same head, byte by byte, is read."""

    async def byte_by_byte(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        raw = b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * 100 + b"\r\nContent-Length: 2\r\n\r\nok"
        for n in range(len(raw)):
            writer.write(raw[n : n + 1])
            await writer.drain()
            await asyncio.sleep(0)
        return True

    server.respond = byte_by_byte
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert response.headers["x-a"] == "a" * 100


async def test_a_head_and_body_in_one_read_past_the_head_bound_is_read(
    server: RawReceiver, client: HttpClient
) -> None:
    """A head near its bound followed by a long body in the same read: the body is not
    counted as head."""
    headers = b"".join(b"x-h%d: %s\r\n" % (n, b"a" * 600) for n in range(90))
    server.respond = answering(
        b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 100000\r\n\r\n" + b"x" * 100_000
    )
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert (response.status, response.body, response.truncated) == (200, b"x" * 10, True)


async def test_endless_trailers_fail_at_their_bound_with_the_status(
    server: RawReceiver, client: HttpClient
) -> None:
    server.respond = endless(
        server,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: ",
        b"a" * 65536,
    )
    async with asyncio.timeout(30):
        with pytest.raises(HeadTooLarge, match=r"chunk framing and trailers are over 64 KiB$") as e:
            await post(client, timeout_s=60)
        await server.closed_by_client()
    assert e.value.status == 200


async def test_trailers_within_the_bounds_are_read(server: RawReceiver, client: HttpClient) -> None:
    server.respond = answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nx-t: 1\r\nx-u: 2\r\n\r\n"
    )
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10)
    assert (response.body, response.headers["x-t"], response.headers["x-u"]) == (b"ok", "1", "2")


async def test_a_head_that_drips_endlessly_times_out(
    server: RawReceiver, client: HttpClient
) -> None:
    """Under the byte bounds, time bounds the head: it must be in within the call's timeout."""

    async def drip(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(10_000):  # bounded: 100 s; until the client goes away
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.01)
        return False

    server.respond = drip
    with pytest.raises(Timeout, match=r"^timeout after 0\.3s$") as caught:
        await post(client, timeout_s=0.3)
    assert caught.value.status is None
    await server.closed_by_client()


# The head, then the body


async def test_on_head_is_told_the_final_status_before_the_body_arrives(
    server: RawReceiver, client: HttpClient
) -> None:
    head_seen = asyncio.Event()
    statuses: list[int] = []

    async def head_then_body(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n"
        )
        await head_seen.wait()
        writer.write(b"ok")
        return True

    def on_head(status: int) -> None:
        statuses.append(status)
        head_seen.set()

    server.respond = head_then_body
    response = await client.post("/", {}, b"", timeout_s=5, max_body=10, on_head=on_head)
    assert (response.status, response.body, statuses) == (201, b"ok", [201])


async def test_after_the_head_the_body_has_body_timeout_s_if_more_than_was_left(
    server: RawReceiver, client: HttpClient
) -> None:
    """The head comes at once, the body after more than the call's timeout_s: with
    body_timeout_s, it is read."""
    late = asyncio.Event()

    async def late_body(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        await late.wait()
        writer.write(b"ok")
        return True

    server.respond = late_body
    call = asyncio.create_task(
        client.post("/", {}, b"", timeout_s=1, max_body=10, body_timeout_s=30)
    )
    await asyncio.sleep(1.5)  # past timeout_s
    assert not call.done()
    late.set()
    assert (await call).body == b"ok"


async def test_a_body_past_body_timeout_s_times_out_with_the_status(
    server: RawReceiver, client: HttpClient
) -> None:
    async def stall(
        head: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
        return await server.hang(head, body, reader, writer)

    server.respond = stall
    with pytest.raises(Timeout, match=r"^timeout after 1\.5s reading the body$") as caught:
        await client.post("/", {}, b"", timeout_s=1, max_body=10, body_timeout_s=1.5)
    assert caught.value.status == 200
    await server.closed_by_client()
