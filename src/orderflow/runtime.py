"""Runtime: the start and stop of the whole service, whoever serves its HTTP API.

Start: open the store, load the snapshot, build the shipper and the processor, start them.
Stop: stop processing, close the shipper, save the snapshot, close the store; each step runs
even when the one before it failed. A start that fails closes what it opened, and says why in
the user's terms (`StartupError`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from aiohttp.abc import AbstractResolver

from orderflow.clock import Clock, SystemClock
from orderflow.domain import Event, Order, OrderStatus, advance, id_matches_timestamp, is_order_id
from orderflow.errors import StoreUnavailable
from orderflow.events import EventHub
from orderflow.processor import Processor, ProcessorSettings
from orderflow.service import OrderService
from orderflow.settings import Settings
from orderflow.shipping import Shipper, SimulatedShipper
from orderflow.snapshot import SnapshotError, SnapshotFile
from orderflow.store import open_store
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore, MemoryState
from orderflow.supervise import OutageLog, supervised
from orderflow.webhooks import open_webhook_store
from orderflow.webhooks.delivery import Deliverer

log = logging.getLogger("orderflow.runtime")


class StartupError(Exception):
    """The service cannot start; the message says why, naming the flag or file at fault."""


class Runtime:
    """Args:
    store, shipper, clock: given instead of built from `settings` (tests).
    webhook_resolver: resolves the names of webhook receivers (tests; default: the system's).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: OrderStore | None = None,
        shipper: Shipper | None = None,
        clock: Clock | None = None,
        webhook_resolver: AbstractResolver | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._webhook_resolver = webhook_resolver
        self.clock = clock or SystemClock()
        self._given_store = store
        self._given_shipper = shipper
        self.started = False
        self._snapshot: SnapshotFile | None = None
        self._loops: list[asyncio.Task[None]] = []
        self.store: OrderStore
        self.shipper: Shipper
        self.processor: Processor
        self.service: OrderService
        self.events: EventHub
        self.webhooks: Deliverer

    async def start(self) -> None:
        """Open, load, build and start everything. Raises StartupError."""
        settings = self.settings
        if settings.snapshot and not settings.database_url.startswith("memory:"):
            raise StartupError(
                "--snapshot: only for the in-memory store; SQLite and PostgreSQL keep the orders"
                " themselves"
            )
        self.store = (
            self._given_store if self._given_store is not None else await _open_store(settings)
        )
        try:
            if settings.snapshot:
                self._load_snapshot(Path(settings.snapshot))
            self.shipper = (
                self._given_shipper if self._given_shipper is not None else load_shipper(settings)
            )
            self.processor = Processor(
                self.store, self.shipper, self.clock, processor_settings(settings)
            )
            self.service = OrderService(
                self.store, self.processor, self.clock, idempotency_ttl_s=settings.idempotency_ttl
            )
            await self.processor.start()
            self.events = EventHub(
                self.store,
                poll_s=settings.poll_interval,
                keep_alive_s=settings.sse_keep_alive,
                stream_bytes=settings.sse_stream_bytes,
            )
            self.webhooks = _deliverer(settings, self.store, self._webhook_resolver)
            self.store.watch_events(self._events_arrived)
            await self.events.start()
            try:
                await self.webhooks.start()
            except StoreUnavailable as exc:
                raise StartupError(f"--webhook: {exc}") from None
            except ValueError as exc:  # a URL that leads where webhooks may not go
                raise StartupError(str(exc)) from None
        except BaseException:
            if self._snapshot is not None:
                self._snapshot.unmark()
            await self.store.close()
            raise
        self._loop(self.service.prune_idempotency, min(600.0, settings.idempotency_ttl / 10),
                   "pruning idempotency keys")  # fmt: skip
        self._loop(self._prune_events, min(60.0, settings.event_retention / 10), "pruning events")
        self.started = True

    def _events_arrived(self) -> None:
        self.events.wake()
        self.webhooks.wake()

    def _loop(self, step: Callable[[], Awaitable[object]], every_s: float, what: str) -> None:
        self._loops.append(
            asyncio.create_task(
                supervised(step, every_s=every_s, log=OutageLog(log, what)), name=what
            )
        )

    async def _prune_events(self) -> None:
        settings = self.settings
        while True:  # in batches, each its own short statement: never blocks requests
            before = self.clock.now() - timedelta(seconds=settings.event_retention)
            pruned = await self.store.prune_events(before, settings.event_retention_count)
            if pruned < 10_000:
                return
            await asyncio.sleep(0)

    def _load_snapshot(self, path: Path) -> None:
        store = self.store
        assert isinstance(store, InMemoryOrderStore)
        snapshot = SnapshotFile(path, recover=self.settings.snapshot_recover)
        try:
            state = snapshot.read()
        except SnapshotError as exc:
            raise StartupError(f"--snapshot: {exc}") from None
        if state is not None:
            now = self.clock.now()

            def arrived(order: Order) -> Order:
                if not (is_order_id(order.id) and id_matches_timestamp(order.id, order.timestamp)):
                    raise StartupError(
                        f"--snapshot: {path} holds an order whose id is not its time ({order.id})"
                    )
                if order.status is OrderStatus.PROCESSING:
                    return advance(order, Event.RELEASE, now, "restart: was processing")
                return order

            store.load(state, arrived)
        snapshot.mark_loaded()
        self._snapshot = snapshot

    async def stop(self) -> None:
        """Stop everything, each step even if the one before failed; the snapshot is saved
        whatever happened to the processor."""
        if not self.started:
            return
        self.started = False
        self.service.stopping = True
        try:
            try:
                try:
                    await self.events.close()  # streams end cleanly, first
                finally:
                    await self.processor.stop(self.settings.shutdown_grace)
            finally:
                await self.webhooks.stop(self.settings.shutdown_grace)
                for task in self._loops:
                    task.cancel()
                await asyncio.gather(*self._loops, return_exceptions=True)
                await self.shipper.close()
        finally:
            try:
                if self._snapshot is not None:
                    store = self.store
                    assert isinstance(store, InMemoryOrderStore)
                    self._snapshot.save(store.dump())
            finally:
                await self.store.close()
        log.info("stopped")


async def _open_store(settings: Settings) -> OrderStore:
    try:
        return await open_store(
            settings.database_url,
            migrate=settings.migrate,
            event_retention=settings.event_retention_count,
            poll_s=settings.poll_interval,
        )
    except ValueError as exc:
        raise StartupError(f"--database-url: {exc}") from None
    except StoreUnavailable as exc:
        raise StartupError(f"--database-url: {exc}") from None


def _deliverer(
    settings: Settings, store: OrderStore, resolver: AbstractResolver | None = None
) -> Deliverer:
    try:
        return Deliverer.from_settings(settings, store, open_webhook_store(store), resolver)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def processor_settings(settings: Settings) -> ProcessorSettings:
    return ProcessorSettings(
        concurrency=settings.concurrency,
        timeout_s=settings.process_timeout,
        max_attempts=settings.max_attempts,
        retry_backoff_s=settings.retry_backoff,
        poll_interval_s=settings.poll_interval,
        heartbeat_s=settings.heartbeat_interval,
        lease_s=settings.lease_timeout,
        auto_process=settings.auto_process,
    )


def load_shipper(settings: Settings) -> Shipper:
    """The shipper `--shipper` names. Raises StartupError."""
    spec = settings.shipper
    if spec == "simulated":
        return SimulatedShipper(
            settings.ship_delay, settings.ship_jitter, settings.ship_failure_rate
        )
    try:
        if spec.startswith("python:"):
            from orderflow.shippers.python import load_python_shipper

            return load_python_shipper(spec.removeprefix("python:"))
        if spec.startswith(("http://", "https://")):
            from orderflow.shippers.http import HttpShipper

            if not settings.shipper_secret:
                raise ValueError("--shipper-secret (a whsec_ key) is needed to sign the calls")
            return HttpShipper(spec, settings.shipper_secret, timeout_s=settings.process_timeout)
    except ValueError as exc:
        message = str(exc)
        raise StartupError(
            message if message.startswith("--") else f"--shipper: {message}"
        ) from None
    raise StartupError(
        f"--shipper: {spec!r} is not simulated, python:module:function or an http(s):// URL"
    )


__all__ = ["MemoryState", "Runtime", "StartupError"]
