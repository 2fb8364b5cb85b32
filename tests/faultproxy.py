"""FaultProxy: a TCP proxy that tests put between orderflow and PostgreSQL to inject faults.

Tests cut connections with a reset, refuse new ones, partition the network, or cut a
connection as a byte pattern goes by. The proxy runs its own event loop in a daemon thread,
so sync and async tests drive it the same way, through blocking, thread-safe calls.
Patterns are matched against raw bytes, so they see only plaintext (asyncpg: `ssl=False`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")
Direction = Literal["client_to_server", "server_to_client"]

CONTROL_TIMEOUT_S = 5.0  # the longest a control call, start or stop may block its caller
_CONNECT_TIMEOUT_S = 3.0
_CLOSE_TIMEOUT_S = 2.0
_CHUNK_BYTES = 64 * 1024
_TAIL_BYTES = 1024  # kept of each direction's last chunk, so also the longest pattern allowed
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Hook:
    """An armed `cut_after`/`cut_before`: cuts the connection of the next `count` matching chunks.

    `wait`/`is_set` work like a `threading.Event`, set once the hook has fired `count` times.
    A firing is recorded as its connection is reset, before the peer can notice the reset, so
    an async test checks `is_set()` after its client failed rather than block its loop in `wait`.
    """

    def __init__(
        self, pattern: bytes | re.Pattern[bytes], direction: Direction, count: int, *, before: bool
    ) -> None:
        if direction not in get_args(Direction):
            raise ValueError(f"unknown direction {direction!r}")
        size = len(pattern.pattern if isinstance(pattern, re.Pattern) else pattern)
        if not 0 < size <= _TAIL_BYTES or count < 1:
            raise ValueError(f"need 1..{_TAIL_BYTES} pattern bytes and count >= 1")
        self.pattern, self.direction, self.count, self.before = pattern, direction, count, before
        self.fired = 0
        self._armed = count  # matches left to take; touched on the proxy's loop only
        self._done = threading.Event()

    def is_set(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float = CONTROL_TIMEOUT_S) -> bool:
        """Block until the hook has fired `count` times; False if `timeout_s` passed first."""
        return self._done.wait(timeout_s)

    def _take(self, direction: Direction, window: bytes, new_from: int) -> bool:
        # Only an occurrence that ends in the new chunk counts: the tail was searched before.
        if direction != self.direction:
            return False
        if isinstance(self.pattern, re.Pattern):  # a match that ends in the new chunk
            if not any(m.end() > new_from for m in self.pattern.finditer(window)):
                return False
        elif window.find(self.pattern, max(0, new_from - len(self.pattern) + 1)) < 0:
            return False
        self._armed -= 1
        return True

    def _record(self) -> None:
        self.fired += 1
        if self.fired == self.count:
            self._done.set()


class _Link:
    """One proxied connection: the client's side, and the server's once connected."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.tails: dict[Direction, bytes] = {"client_to_server": b"", "server_to_client": b""}

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client] if self.server is None else [self.client, self.server]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once with SO_LINGER 0, so the peer sees a reset (RST) rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()


def _reset_socket(sock: socket.socket) -> None:
    """`_reset` for a socket no transport has taken."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


async def _closed(writers: list[asyncio.StreamWriter]) -> None:
    """Wait until the sockets of `writers` are closed; reset those a clean close holds up."""
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    except TimeoutError:  # a peer that never reads what a clean close must flush first
        for writer in writers:
            _reset(writer)


class FaultProxy:
    """Forwards TCP from 127.0.0.1:`port` (0: a free one) to `target`, faults on demand.

    A blackhole drops bytes both ways and accepts new connections without telling the server.
    When it ends, every open connection is cut: bytes were lost, so the two ends no longer
    agree on the protocol state, as after a real partition. Connections opened later forward.
    """

    def __init__(self, target: tuple[str, int], *, port: int = 0) -> None:
        self.target = target
        self.port = port
        self._accepted = 0
        self._links: dict[_Link, None] = {}  # open connections in accept order (cut_one's rng)
        self._hooks: list[Hook] = []
        self._refusing = False
        self._stopping = False
        self._blackholed = False
        self._handlers: set[asyncio.Task[None]] = set()
        # Every socket is owned from the moment it exists, so that none is left open for the
        # garbage collector however a stop interrupts a connection being set up: raw sockets
        # until a transport takes them, then the transports' writers.
        self._sockets: set[socket.socket] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def connections(self) -> int:
        """Connections open now (refused ones never count)."""
        return len(self._links)

    @property
    def settled(self) -> bool:
        """No connection open, and none still closing."""
        return not self._links and not self._handlers

    @property
    def total_connections(self) -> int:
        """Connections ever accepted, refused ones included."""
        return self._accepted

    def url_for(self, dsn: str) -> str:
        """`dsn` (a postgresql:// URL) pointed at the proxy: same user, database and options."""
        parts = urlsplit(dsn)
        user, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{self.port}"))

    def start(self) -> FaultProxy:
        """Start the loop thread; returns once listening (then `port` is the real port)."""
        if self._loop is not None:
            raise RuntimeError("FaultProxy already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"FaultProxy->{self.target}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop listening, cut every connection, and join the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown(), timeout_s=4 * CONTROL_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CONTROL_TIMEOUT_S)
            self._loop = self._thread = None
        if thread.is_alive():
            raise RuntimeError("FaultProxy thread did not stop")
        loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def cut_all(self) -> int:
        """Reset every open connection, both sides; returns how many there were."""
        return self._call(self._cut_all())

    def cut_one(self, rng: random.Random | None = None) -> bool:
        """Reset one open connection picked by `rng`; returns whether there was one."""

        async def cut_one() -> bool:
            if not self._links:
                return False
            await self._close((rng or random.Random()).choice(list(self._links)), reset=True)
            return True

        return self._call(cut_one())

    def blackhole(self, on: bool) -> None:
        """Partition (on) or heal (off) the network; healing cuts every open connection."""

        async def blackhole() -> None:
            healed, self._blackholed = self._blackholed and not on, on
            if healed:
                await self._cut_all()

        self._call(blackhole())

    def refuse(self, on: bool) -> None:
        """While on, reset each new connection at once; open ones go on."""

        async def refuse() -> None:
            self._refusing = on

        self._call(refuse())

    def cut_after(
        self,
        pattern: bytes | re.Pattern[bytes],
        *,
        direction: Direction = "client_to_server",
        count: int = 1,
    ) -> Hook:
        """Reset the connection right after forwarding a chunk that contains `pattern` (bytes,
        or a compiled bytes regex)."""
        return self._arm(Hook(pattern, direction, count, before=False))

    def cut_before(
        self,
        pattern: bytes | re.Pattern[bytes],
        *,
        direction: Direction = "client_to_server",
        count: int = 1,
    ) -> Hook:
        """Reset the connection instead of forwarding a chunk that contains `pattern`.

        A pattern split across chunks is found in the second one; the first has gone through.
        """
        return self._arm(Hook(pattern, direction, count, before=True))

    def _arm(self, hook: Hook) -> Hook:
        async def arm() -> None:
            self._hooks.append(hook)

        self._call(arm())
        return hook

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = CONTROL_TIMEOUT_S) -> T:
        """Run `coro` on the proxy's loop and wait for its result, at most `timeout_s`."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("FaultProxy is not started")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        finally:
            future.cancel()  # a no-op once done; stops a timed-out call

    async def _listen(self) -> None:
        listener = self._listener = socket.socket()  # closed by `_shutdown`, whatever happens
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        asyncio.get_running_loop().add_reader(listener, self._accept)

    def _accept(self) -> None:
        """Accept what is waiting. Our own accept rather than asyncio's server: each socket is
        ours, and in its handler's hands, the moment it is accepted, with no await between."""
        listener = self._listener
        assert listener is not None
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):  # nothing more waits
                return
            except OSError:  # out of file descriptors, say: pause accepting for a moment
                loop = asyncio.get_running_loop()
                loop.remove_reader(listener)
                loop.call_later(0.1, self._resume_accepting)
                return
            conn.setblocking(False)
            self._sockets.add(conn)
            self._accepted += 1
            task = asyncio.get_running_loop().create_task(self._serve(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _resume_accepting(self) -> None:
        if not self._stopping and self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener, self._accept)

    async def _shutdown(self) -> None:
        self._stopping = True  # a connection accepted from now on is reset at once
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()
        while self._handlers:
            await self._cut_all()  # handlers end once their sockets are closed
            if not self._handlers:
                break
            _, stuck = await asyncio.wait(self._handlers, timeout=_CLOSE_TIMEOUT_S)
            for task in stuck:
                task.cancel()  # still connecting to a target that does not answer
            await asyncio.gather(*stuck, return_exceptions=True)
        for sock in self._sockets:  # never handed to a transport
            _reset_socket(sock)
        for writer in self._writers:
            _reset(writer)  # a no-op on one closed already
        self._sockets.clear()
        self._writers.clear()
        for _ in range(2):  # a reset transport closes its socket on the loop's next turn
            await asyncio.sleep(0)

    async def _cut_all(self) -> int:
        links = list(self._links)
        await asyncio.gather(*(self._close(link, reset=True) for link in links))
        return len(links)

    async def _close(self, link: _Link, *, reset: bool) -> None:
        """Close both sides of `link` (idempotent); returns once the sockets are closed."""
        await _closed(self._drop(link, reset=reset))

    def _drop(self, link: _Link, *, reset: bool) -> list[asyncio.StreamWriter]:
        """Forget `link` and start closing it; its sockets close on the loop's next turn."""
        self._links.pop(link, None)
        for writer in link.writers():
            if reset:
                _reset(writer)
            else:
                writer.close()
        return link.writers()

    async def _serve(self, conn: socket.socket) -> None:
        if self._refusing or self._stopping:
            self._sockets.discard(conn)
            _reset_socket(conn)
            return
        try:
            reader, writer = await self._stream(conn)
        except OSError:  # the client is gone already; `_shutdown` closes what is left
            return
        link = _Link(writer)
        self._links[link] = None
        try:
            if self._blackholed:  # partitioned: the server never hears of this connection
                while await reader.read(_CHUNK_BYTES):
                    pass
                return
            server_reader, server_writer = await self._connect()
            link.server = server_writer
            if link not in self._links:  # cut while connecting
                return
            for side in link.writers():
                # No buffer in the proxy: drain() returns once the kernel has every byte,
                # so a cut right after it cannot swallow what was forwarded.
                side.transport.set_write_buffer_limits(high=0)
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(link, reader, server_writer, "client_to_server"))
                pumps.create_task(self._pump(link, server_reader, writer, "server_to_client"))
        except OSError:  # TimeoutError too: the target is down or slow; the client sees a reset
            await self._close(link, reset=True)
        finally:
            await self._close(link, reset=False)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the target, within _CONNECT_TIMEOUT_S."""
        sock = socket.socket()
        sock.setblocking(False)
        self._sockets.add(sock)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await asyncio.get_running_loop().sock_connect(sock, self.target)
        except BaseException:
            self._sockets.discard(sock)
            sock.close()
            raise
        return await self._stream(sock)

    async def _stream(
        self, sock: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams over `sock`, whose transport owns it from then on."""
        reader, writer = await asyncio.open_connection(sock=sock)
        self._writers.append(writer)
        self._sockets.discard(sock)
        return reader, writer

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        """Copy one direction until EOF or a cut; either side's end ends the whole link."""
        try:
            while chunk := await reader.read(_CHUNK_BYTES):
                if self._blackholed:
                    continue  # dropped; the link is cut when the blackhole ends
                hits = self._hits(link, direction, chunk)
                if not any(hook.before for hook in hits):
                    writer.write(chunk)
                    await writer.drain()
                if hits:
                    closing = self._drop(link, reset=True)
                    # Before the reset goes out: whoever sees it finds the hook fired.
                    for hook in hits:
                        hook._record()
                    await _closed(closing)
                    return
        except OSError:  # a peer reset its side: pass the reset on to the other
            await self._close(link, reset=True)
        else:
            await self._close(link, reset=False)

    def _hits(self, link: _Link, direction: Direction, chunk: bytes) -> list[Hook]:
        """The hooks `chunk` fires; keeps a tail so a pattern split across chunks is found."""
        tail = link.tails[direction]
        window = tail + chunk
        link.tails[direction] = window[-_TAIL_BYTES:]
        hits = [hook for hook in self._hooks if hook._take(direction, window, len(tail))]
        if hits:
            self._hooks = [hook for hook in self._hooks if hook._armed]
        return hits
