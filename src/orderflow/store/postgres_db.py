"""PostgreSQL connections as the stores use them: `Database`, a pool whose connections turn the
driver's errors into ours (and say when a change was made), and `Listener`, the one connection
that hears NOTIFY, opened again by itself when it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from orderflow.errors import StoreUnavailable
from orderflow.store.postgres_rows import translated
from orderflow.supervise import OutageLog, StoreOutage, supervised

log = logging.getLogger("orderflow.store.postgres")


class Database:
    """A pool of connections (`pool`, an asyncpg pool) shared by the order store and the
    webhook store of one process. `written` is set whenever a change was made through it;
    `outage` says an outage once when it starts and once when it ends, whoever met it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.written = asyncio.Event()
        self.outage = StoreOutage(log, "the database")

    @contextlib.asynccontextmanager
    async def connection(
        self, *, changing: bool = False, leaves_events: bool = True
    ) -> AsyncIterator[Any]:
        """A pooled connection. Errors while getting it mean nothing ran (StoreUnavailable);
        errors while using it are translated (`changing`: a broken connection leaves the outcome
        unknown); errors while giving it back (it broke after the answer) are logged, never
        raised: the statement's answer stands. A change sets `written`, unless it
        `leaves_events` to number none (a webhook store's)."""
        outage = self.outage
        try:
            with translated():
                connection = await self.pool.acquire(timeout=5)
        except StoreUnavailable as exc:
            outage.began(exc)
            raise
        try:
            with translated(changing=changing):
                yield connection
        except StoreUnavailable as exc:
            outage.began(exc)
            raise
        else:
            if outage.since is not None:
                outage.ended()
        finally:
            if changing and leaves_events:
                self.written.set()
            try:
                await self.pool.release(connection)
            except Exception as exc:  # the pool replaces a broken connection by itself
                log.debug("a connection broke on its way back to the pool: %r", exc)

    async def close(self) -> None:
        # A connection still checked out (a request cut off by shutdown) must not hold us.
        try:
            await asyncio.wait_for(self.pool.close(), timeout=5)
        except TimeoutError:
            self.pool.terminate()
        except Exception:  # closing: nothing left to do about it
            log.debug("closing the pool failed", exc_info=True)


class Listener:
    """The connection that hears `channels` (name → callback with the payload), opened by
    `listen` and opened again, every `check_s`, while it is lost; `lost` is called (no more
    than once per loss) so that whoever relied on it can look for what it missed. A lost
    connection is part of the database's outage (`outage`)."""

    def __init__(
        self,
        dsn: str,
        server_settings: dict[str, str],
        channels: dict[str, Callable[[str], object]],
        *,
        on_reconnect: Callable[[], object],
        outage: StoreOutage,
        check_s: float = 2.0,
    ) -> None:
        self._outage = outage
        self._dsn = dsn
        self._server_settings = server_settings
        self._channels = channels
        self._on_reconnect = on_reconnect
        self._check_s = check_s
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def listen(self) -> None:
        """Open the connection (raises StoreUnavailable), then keep it open until `close`."""
        await self._open()
        self._task = asyncio.create_task(
            supervised(
                self._keep_open,
                every_s=self._check_s,
                log=OutageLog(log, "the notification connection"),
            ),
            name="orderflow-listener",
        )

    async def _open(self) -> None:
        try:
            with translated():
                connection = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings=self._server_settings
                )
                for channel, callback in self._channels.items():
                    await connection.add_listener(
                        channel, lambda _c, _pid, _ch, payload, call=callback: call(payload)
                    )
        except StoreUnavailable as exc:
            self._outage.began(exc)
            raise
        connection.add_termination_listener(self._lost)
        self._connection = connection

    async def _keep_open(self) -> None:
        if self._closing or (self._connection is not None and not self._connection.is_closed()):
            return
        await self._open()
        self._on_reconnect()  # what the lost connection missed may be there now

    def _lost(self, _connection: Any) -> None:
        # Polling covers what notifications would have said until it is open again.
        if not self._closing:
            self._outage.began("the notification connection was lost")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            if self._connection is not None:
                await self._connection.close(timeout=5)
