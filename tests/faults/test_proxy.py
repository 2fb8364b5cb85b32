"""FaultProxy does what fault tests rely on: it forwards, and each fault looks to asyncpg (or a
plain socket) the way the real network failure would."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, suppress
from typing import Any

import asyncpg
import pytest

from tests.faultproxy import FaultProxy, Hook
from tests.postgres import DATABASE_URL, admin_connection

# What asyncpg raises through a cut connection: ConnectionDoesNotExistError (a
# PostgresConnectionError) when the reset hits a query in flight, InterfaceError when it already
# knew the connection was closed, ConnectionResetError when the reset comes during connect.
CONNECTION_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)


async def connect(proxy: FaultProxy, timeout_s: float = 2.0) -> asyncpg.Connection:
    # ssl=False: the hooks read plaintext, and a server with ssl=on would otherwise negotiate TLS.
    return await asyncpg.connect(
        proxy.url_for(DATABASE_URL), ssl=False, timeout=timeout_s, command_timeout=2
    )


@asynccontextmanager
async def connected(proxy: FaultProxy) -> AsyncIterator[asyncpg.Connection]:
    db = await connect(proxy)
    try:
        yield db
    finally:
        db.terminate()  # close() would wait on a connection the test may have broken


async def test_queries_pass_through_the_proxy(proxy: FaultProxy) -> None:
    assert proxy.url_for("postgresql://postgres@db:5432/test?x=1") == (
        f"postgresql://postgres@127.0.0.1:{proxy.port}/test?x=1"
    )
    async with connected(proxy) as db:
        assert await db.fetchval("SELECT 1") == 1
        assert (proxy.connections, proxy.total_connections) == (1, 1)


async def test_cut_all_fails_the_next_query_and_new_connections_work(proxy: FaultProxy) -> None:
    async with connected(proxy) as db:
        assert await db.fetchval("SELECT 1") == 1
        assert proxy.cut_all() == 1
        assert proxy.connections == 0
        with pytest.raises(CONNECTION_ERRORS):
            await db.fetchval("SELECT 1")
    async with connected(proxy) as db:
        assert await db.fetchval("SELECT 2") == 2


async def test_refuse_fails_new_connections_at_once_and_spares_open_ones(
    proxy: FaultProxy,
) -> None:
    async with connected(proxy) as db:
        proxy.refuse(True)
        started = time.monotonic()
        with pytest.raises(CONNECTION_ERRORS):
            await connect(proxy)
        assert time.monotonic() - started < 1.0  # a reset, not the 2 s connect timeout
        assert await db.fetchval("SELECT 1") == 1
        proxy.refuse(False)
        async with connected(proxy) as again:
            assert await again.fetchval("SELECT 2") == 2
    assert proxy.total_connections == 3


async def test_blackhole_times_queries_out_and_its_end_cuts_the_survivors(
    proxy: FaultProxy,
) -> None:
    async with connected(proxy) as db:
        proxy.blackhole(True)
        with pytest.raises(TimeoutError):
            await db.fetchval("SELECT 1", timeout=0.5)
        with pytest.raises(TimeoutError):  # accepted, but the server never answers
            await connect(proxy, timeout_s=0.5)
        proxy.blackhole(False)
        assert proxy.connections == 0
        with pytest.raises(CONNECTION_ERRORS):
            await db.fetchval("SELECT 1")
    async with connected(proxy) as db:
        assert await db.fetchval("SELECT 2") == 2


async def test_a_cut_on_reset_all_breaks_the_pool_release_and_the_pool_recovers(
    proxy: FaultProxy,
) -> None:
    """asyncpg 0.32 releases a pooled connection with one simple query:
    "SELECT pg_advisory_unlock_all();\\nCLOSE ALL;\\nUNLISTEN *;\\nRESET ALL;"."""
    pool = await asyncpg.create_pool(
        proxy.url_for(DATABASE_URL), ssl=False, min_size=1, max_size=1, command_timeout=2
    )
    try:
        hook = proxy.cut_after(b"RESET ALL")
        db = await pool.acquire()
        assert await db.fetchval("SELECT 1") == 1
        assert not hook.is_set()
        # asyncpg terminates the connection whose reset failed, then raises the failure from
        # release (so from the exit of `async with pool.acquire()` too).
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await pool.release(db)
        assert (hook.is_set(), hook.fired) == (True, 1)
        async with pool.acquire() as db:
            assert await db.fetchval("SELECT 2") == 2
        assert proxy.total_connections == 2  # the pool replaced the connection
    finally:
        pool.terminate()


@pytest.mark.parametrize(
    ("arm", "delivered"), [(FaultProxy.cut_after, True), (FaultProxy.cut_before, False)]
)
async def test_cut_after_delivers_the_matching_chunk_and_cut_before_withholds_it(
    proxy: FaultProxy, arm: Callable[[FaultProxy, bytes], Hook], delivered: bool
) -> None:
    channel = f"fault_proxy_{secrets.token_hex(4)}"
    expected = {"proxied", "direct"} if delivered else {"direct"}
    heard: set[str] = set()
    all_heard = asyncio.Event()

    def on_notify(_db: object, _pid: int, _channel: str, payload: str) -> None:
        heard.add(payload)
        if heard >= expected:
            all_heard.set()

    listener = await admin_connection()
    try:
        await listener.add_listener(channel, on_notify)
        hook = arm(proxy, b"'proxied'")
        async with connected(proxy) as db:
            with pytest.raises(CONNECTION_ERRORS):
                await db.execute(f"NOTIFY {channel}, 'proxied'")
        assert hook.is_set()
        await listener.execute(f"NOTIFY {channel}, 'direct'")
        await asyncio.wait_for(all_heard.wait(), 2)
        assert heard == expected
    finally:
        await listener.close()


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with suppress(ConnectionError):
            while data := self.request.recv(4096):
                self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP server on a thread of its own that sends back what it receives."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        yield "127.0.0.1", server.server_address[1]
        server.shutdown()
        thread.join(5)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (more := sock.recv(size - len(data))):
        data += more
    return data


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while more := sock.recv(64):
        data += more
    return data


def echoes(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping")
        return recv_exactly(sock, 4) == b"ping"
    except ConnectionError:
        return False


def test_a_pattern_split_across_chunks_fires_and_the_client_sees_a_reset(
    echo_server: tuple[str, int],
) -> None:
    with (
        FaultProxy(echo_server) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock,
    ):
        hook = proxy.cut_after(b"MAGIC", direction="server_to_client")
        sock.sendall(b"xxMA")
        assert recv_exactly(sock, 4) == b"xxMA"  # so the proxy forwarded "MA" in a chunk of its own
        sock.sendall(b"GICyy")
        assert hook.wait(2)
        assert proxy.connections == 0
        with pytest.raises(ConnectionResetError):  # never a clean end of stream
            read_to_end(sock)


def test_cut_one_resets_exactly_one_connection(echo_server: tuple[str, int]) -> None:
    with FaultProxy(echo_server) as proxy, ExitStack() as stack:
        assert not proxy.cut_one()
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", proxy.port), timeout=2))
            for _ in range(3)
        ]
        assert all(echoes(sock) for sock in socks)
        assert proxy.cut_one(random.Random(7))
        assert (proxy.connections, proxy.total_connections) == (2, 3)
        assert sorted(echoes(sock) for sock in socks) == [False, True, True]


def test_a_hook_cuts_count_connections_then_disarms(echo_server: tuple[str, int]) -> None:
    with FaultProxy(echo_server) as proxy, ExitStack() as stack:
        hook = proxy.cut_before(b"ping", count=2)
        outcomes = []
        for _ in range(3):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", proxy.port), 2))
            outcomes.append(echoes(sock))
            assert hook.fired == len(outcomes) - sum(outcomes)
        assert outcomes == [False, False, True]
        assert hook.wait(0)


def test_stop_cuts_open_connections_and_may_be_repeated(echo_server: tuple[str, int]) -> None:
    with (
        FaultProxy(echo_server) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock,
    ):
        assert echoes(sock)
        proxy.stop()
        assert not echoes(sock)
    # leaving the block stopped it a second time


@pytest.mark.parametrize(
    "bad", [{"pattern": b""}, {"pattern": b"x" * 1025}, {"count": 0}, {"direction": "sideways"}]
)
def test_hook_arguments_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"pattern|direction"):
        FaultProxy(("127.0.0.1", 9)).cut_before(**{"pattern": b"x", **bad})
