"""RawReceiver: a misbehaving HTTP receiver for the tests that run real processes. It listens on
a free loopback port, in a thread with an event loop of its own; it reads each request (its head
and its Content-Length body), counts it per ``webhook-id``, and answers with exactly the bytes
its `answer` coroutine writes, then closes the connection."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

_LENGTH = re.compile(rb"(?im)^content-length: *(\d+)")
_WEBHOOK_ID = re.compile(rb"(?im)^webhook-id: *(\S+)")


class Reply:
    """The connection one answer writes to; `sent` counts the bytes written."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.sent = 0

    async def send(self, data: bytes) -> None:
        """Write `data` and wait until the socket takes it (ConnectionError once the caller
        went away)."""
        self.writer.write(data)
        self.sent += len(data)
        await self.writer.drain()


Answer = Callable[[Reply], Awaitable[None]]


class RawReceiver:
    """Answers every request with `answer`; start, then close."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.port = 0
        self.calls: Counter[str] = Counter()  # requests per webhook-id
        self.sent: list[int] = []  # bytes written, per answer ended
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answers_sent(self) -> list[int]:
        with self._lock:
            return list(self.sent)

    def start(self) -> RawReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Each answer ends at its next write; cancelling them instead makes Python 3.11's
        # streams log an error.
        for writer in self._handlers.values():
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        reply = Reply(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            await reader.readexactly(int(length[1]) if length else 0)
            webhook_id = _WEBHOOK_ID.search(head)
            with self._lock:
                self.calls[webhook_id[1].decode() if webhook_id else ""] += 1
            with contextlib.suppress(ConnectionError):
                await self.answer(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with self._lock:
                self.sent.append(reply.sent)
            writer.transport.abort()
            self._handlers.pop(task, None)
