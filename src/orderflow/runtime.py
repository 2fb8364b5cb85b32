"""Runtime: the start and stop of the whole service, whoever serves its HTTP API, and the face
of the running service that the route tables' handlers are handed (`service`, `events`,
`webhooks`, `refresh_gauges`).

Start: open the stores, load the snapshot, build the shipper, the claimer, the processor, the
services, the event hub and the webhook deliverer, and start them. Stop: stop claiming and
processing, close the shipper, save the snapshot, close the stores; each step runs even when
the one before it failed. A start that fails closes what it opened, and says why in the
user's terms (`StartupError`). This is the one place that knows which backends go together and
how each flag maps onto the parts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from aiohttp.abc import AbstractResolver

from orderflow.claimer import Claimer
from orderflow.clock import Clock, SystemClock
from orderflow.domain import Event, Order, OrderStatus, advance, id_matches_timestamp, is_order_id
from orderflow.errors import SnapshotError, StartupError, StoreUnavailable
from orderflow.events import EventHub
from orderflow.metrics import METRICS
from orderflow.processor import Processor, ProcessorSettings
from orderflow.service import OrderService
from orderflow.settings import Settings, listed
from orderflow.shippers import load_shipper
from orderflow.shipping import Shipper
from orderflow.signing import check_secret
from orderflow.snapshot import SnapshotFile
from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from orderflow.supervise import OutageLog, supervised
from orderflow.webhooks.delivery import Deliverer, DelivererSettings
from orderflow.webhooks.destinations import Destinations
from orderflow.webhooks.model import check_url, parse_schedule
from orderflow.webhooks.sender import Sender
from orderflow.webhooks.service import WebhookService
from orderflow.webhooks.store import InMemoryWebhookStore, WebhookStore

log = logging.getLogger("orderflow.runtime")


class Runtime:
    """Args:
    store, webhook_store, shipper, clock: given instead of built from `settings` (tests); a
        given order store without a webhook store gets one in memory.
    webhook_resolver: resolves the names of webhook receivers (tests; default: the system's).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: OrderStore | None = None,
        webhook_store: WebhookStore | None = None,
        shipper: Shipper | None = None,
        clock: Clock | None = None,
        webhook_resolver: AbstractResolver | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._webhook_resolver = webhook_resolver
        self.clock = clock or SystemClock()
        self._given_store = store
        self._given_webhook_store = webhook_store
        self._given_shipper = shipper
        self.started = False
        self._snapshot: SnapshotFile | None = None
        self._loops: list[asyncio.Task[None]] = []
        self.store: OrderStore
        self.webhook_store: WebhookStore
        self.shipper: Shipper
        self.claimer: Claimer
        self.processor: Processor
        self.service: OrderService
        self.events: EventHub
        self.webhooks: WebhookService
        self.deliverer: Deliverer

    async def start(self) -> None:
        """Open, load, build and start everything. Raises StartupError."""
        settings = self.settings
        if settings.snapshot and not settings.database_url.startswith("memory:"):
            raise StartupError(
                "--snapshot: only for the in-memory store; SQLite and PostgreSQL keep the orders"
                " themselves"
            )
        deliverer_settings, webhook_urls = webhook_settings(settings)
        if self._given_store is not None:
            self.store = self._given_store
            self.webhook_store = self._given_webhook_store or InMemoryWebhookStore()
        else:
            self.store, self.webhook_store = await open_stores(settings)
        try:
            if settings.snapshot:
                self._load_snapshot(Path(settings.snapshot))
            self.shipper = self._given_shipper or _shipper(settings)
            self._build(settings, deliverer_settings)
            await self.service.start()
            self.store.watch_events(self._events_arrived)
            await self.events.start()
            try:
                if webhook_urls:
                    assert settings.webhook_secret is not None
                    await self.webhooks.subscribe_at_start(webhook_urls, settings.webhook_secret)
                await self.deliverer.start()
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
        self._loop(self.service.prune_history, 60.0, "pruning minute counts and instances")
        self.started = True

    def _build(self, settings: Settings, deliverer_settings: DelivererSettings) -> None:
        store, clock = self.store, self.clock
        self.processor = Processor(store, self.shipper, clock, processor_settings(settings))
        self.claimer = Claimer(
            store,
            clock,
            self.processor.wake,
            auto_process=settings.auto_process,
            poll_interval_s=settings.poll_interval,
        )
        self.service = OrderService(
            store, self.claimer, self.processor, clock, idempotency_ttl_s=settings.idempotency_ttl
        )
        self.events = EventHub(
            store,
            poll_s=settings.poll_interval,
            keep_alive_s=settings.sse_keep_alive,
            stream_bytes=settings.sse_stream_bytes,
        )
        destinations = Destinations(
            allow_private=settings.webhook_allow_private,
            resolver=self._webhook_resolver,
            timeout_s=settings.webhook_timeout,
        )
        sender = Sender(timeout_s=settings.webhook_timeout, destinations=destinations)
        self.deliverer = Deliverer(store, self.webhook_store, sender, deliverer_settings)
        self.webhooks = WebhookService(
            store,
            self.webhook_store,
            destinations,
            clock,
            changed=self.deliverer.subscriptions_changed,
        )

    def _events_arrived(self) -> None:
        self.events.wake()
        self.deliverer.wake()

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
        snapshots = self.store.snapshots
        if snapshots is None:
            raise StartupError("--snapshot: only for the in-memory store")
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

            snapshots.load(state, arrived)
        snapshot.mark_loaded()
        self._snapshot = snapshot

    async def refresh_gauges(self) -> None:
        """Read the store-wide figures into the metrics (the same on every instance), and this
        instance's own; nothing while the service is not running."""
        if not self.started:
            return
        gauges, store = METRICS.gauges, self.store
        gauges["by_status"] = await store.count_by_status()
        oldest = await store.oldest_pending()
        age = 0.0 if oldest is None else (self.clock.now() - oldest).total_seconds()
        gauges["oldest_pending_age_seconds"] = max(0.0, age)
        gauges["shipments_in_flight"] = self.processor.in_flight
        gauges["held_orders"] = len(self.processor.holdings)
        last = gauges["event_log_last_seq"] = await store.last_event_seq()
        gauges["webhook_delivery_lag_events"] = await self.webhooks.lag(last)

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
                    await self.service.stop(self.settings.shutdown_grace)
            finally:
                await self.deliverer.stop(self.settings.shutdown_grace)
                for task in self._loops:
                    task.cancel()
                await asyncio.gather(*self._loops, return_exceptions=True)
                await self.shipper.close()
        finally:
            try:
                if self._snapshot is not None and self.store.snapshots is not None:
                    self._snapshot.save(self.store.snapshots.dump())
            finally:
                await self.webhook_store.close()
                await self.store.close()
        log.info("stopped")


async def open_stores(settings: Settings) -> tuple[OrderStore, WebhookStore]:
    """The order store `--database-url` names by its scheme (``memory://``, the default,
    ``sqlite:///path.db`` or ``postgresql://…``; a database is migrated first unless
    `--no-migrate`), and the webhook store that goes with it: the same database, or, in
    memory, one that lasts as long as the process. The one place that picks backends. Raises
    StartupError."""
    url = settings.database_url
    scheme = url.partition("://")[0]
    if scheme == "memory":
        return InMemoryOrderStore(event_retention=settings.event_retention_count), (
            InMemoryWebhookStore()
        )
    if scheme in ("postgresql", "postgres"):
        from orderflow.store.postgres import PostgresOrderStore  # only then the driver
        from orderflow.webhooks.postgres import PostgresWebhookStore

        try:
            store = await PostgresOrderStore.connect(
                url, apply_migrations=settings.migrate, poll_s=settings.poll_interval
            )
        except StoreUnavailable as exc:
            raise StartupError(f"--database-url: {exc}") from None
        return store, PostgresWebhookStore(store.database)
    if scheme == "sqlite":
        from orderflow.store.sqlite import SqliteOrderStore  # only then the driver
        from orderflow.webhooks.sqlite import SqliteWebhookStore

        try:
            sqlite = await SqliteOrderStore.open(url, apply_migrations=settings.migrate)
        except (ValueError, StoreUnavailable) as exc:
            raise StartupError(f"--database-url: {exc}") from None
        return sqlite, SqliteWebhookStore(sqlite.database)
    raise StartupError(
        f"--database-url: unsupported scheme {scheme!r} (use memory://, sqlite:///path.db or"
        " postgresql://)"
    )


def processor_settings(settings: Settings) -> ProcessorSettings:
    return ProcessorSettings(
        concurrency=settings.concurrency,
        timeout_s=settings.process_timeout,
        max_attempts=settings.max_attempts,
        retry_backoff_s=settings.retry_backoff,
        poll_interval_s=settings.poll_interval,
        heartbeat_s=settings.heartbeat_interval,
        lease_s=settings.lease_timeout,
    )


def webhook_settings(settings: Settings) -> tuple[DelivererSettings, list[str]]:
    """The deliverer's settings from the --webhook* flags, and the URLs to subscribe at start
    (checked: well formed, and no forbidden literal address). Raises StartupError naming the
    flag."""
    try:
        schedule = parse_schedule(settings.webhook_retry_schedule)
    except ValueError as exc:
        raise StartupError(f"--webhook-retry-schedule: {exc}") from None
    urls = listed(settings.webhook)
    policy = Destinations(allow_private=settings.webhook_allow_private)
    try:
        for url in urls:
            check_url(url)
            policy.check_literal(url)
    except ValueError as exc:
        raise StartupError(f"--webhook: {str(exc).removeprefix('url: ')}") from None
    if urls and not settings.webhook_secret:
        raise StartupError("--webhook-secret (a whsec_ key) is needed to sign the calls")
    if settings.webhook_secret:
        try:
            check_secret(settings.webhook_secret)
        except ValueError as exc:
            raise StartupError(f"--webhook-secret: {str(exc).removeprefix('secret: ')}") from None
    deliverer = DelivererSettings(
        schedule_s=schedule,
        timeout_s=settings.webhook_timeout,
        poll_s=settings.poll_interval,
        lease_s=settings.webhook_timeout + settings.lease_timeout,
    )
    return deliverer, urls


def _shipper(settings: Settings) -> Shipper:
    try:
        return load_shipper(settings)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


__all__ = ["Runtime", "StartupError", "open_stores", "processor_settings", "webhook_settings"]
