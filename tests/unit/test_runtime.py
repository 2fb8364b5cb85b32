"""Runtime: a start that fails closes what it opened and says why in the user's terms; a stop
runs every step, whatever failed before it."""

from __future__ import annotations

from pathlib import Path

import pytest

import orderflow.runtime as runtime_module
from orderflow.domain import OrderStatus
from orderflow.errors import ShuttingDown, StartupError
from orderflow.runtime import Runtime, processor_settings
from orderflow.settings import Settings
from orderflow.snapshot import SnapshotFile
from orderflow.store.memory import InMemoryOrderStore
from orderflow.webhooks.store import InMemoryWebhookStore
from tests.conftest import FakeShipper, ManualClock, RuntimeFactory, eventually, make_order
from tests.unit.conftest import ClosingMemoryStore


@pytest.mark.parametrize(
    "url", ["postgresql://orderflow@127.0.0.1:5432/orderflow", "postgres://x@127.0.0.1:1/x"]
)
async def test_a_snapshot_with_a_database_is_refused_without_connecting(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """--snapshot with a postgresql:// URL is refused before any store is opened."""
    opened: list[str] = []

    async def open_stores(settings: Settings) -> tuple[InMemoryOrderStore, InMemoryWebhookStore]:
        opened.append(settings.database_url)
        return InMemoryOrderStore(), InMemoryWebhookStore()

    monkeypatch.setattr(runtime_module, "open_stores", open_stores)
    path = tmp_path / "orders.jsonl"
    runtime = Runtime(Settings(snapshot=str(path), database_url=url), clock=clock)
    with pytest.raises(StartupError, match=r"^--snapshot: only for the in-memory store"):
        await runtime.start()
    assert opened == []
    assert not runtime.started
    assert not path.exists()
    assert not SnapshotFile(path).mark.exists()


async def test_an_unknown_store_scheme_is_refused_naming_the_flag(clock: ManualClock) -> None:
    """An unknown --database-url scheme is a StartupError naming the flag."""
    runtime = Runtime(Settings(database_url="mysql://localhost/x"), clock=clock)
    with pytest.raises(StartupError, match=r"^--database-url: unsupported scheme 'mysql'"):
        await runtime.start()


async def test_stopping_saves_the_snapshot_even_when_the_processor_fails_to_stop(
    tmp_path: Path,
    clock: ManualClock,
    shipper: FakeShipper,
    start_runtime: RuntimeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop saves the snapshot, closes the shipper and the store even when processor.stop
    raises."""
    path = tmp_path / "orders.jsonl"
    store = ClosingMemoryStore()
    runtime = await start_runtime(store=store, snapshot=str(path))
    submitted = [await runtime.service.submit("Ada", make_order().items) for _ in range(3)]
    processor = runtime.processor
    stop = processor.stop

    async def stuck(grace_s: float) -> None:
        raise RuntimeError("processor stuck")

    monkeypatch.setattr(processor, "stop", stuck)
    try:
        with pytest.raises(RuntimeError, match="processor stuck"):
            await runtime.stop()
    finally:
        await stop(0)  # what the failed stop left running
    assert store.closed
    assert shipper.closed
    assert not runtime.started
    assert not SnapshotFile(path).mark.exists()
    saved = SnapshotFile(path).read()
    assert saved is not None
    assert [o.id for o in saved.orders] == [s.order_id for s in submitted]
    await runtime.stop()  # a second stop does nothing


async def test_a_stop_closes_the_store_even_when_the_snapshot_cannot_be_saved(
    tmp_path: Path,
    clock: ManualClock,
    shipper: FakeShipper,
    start_runtime: RuntimeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot that cannot be written still lets the stop close the shipper and the store."""
    path = tmp_path / "orders.jsonl"
    store = ClosingMemoryStore()
    runtime = await start_runtime(store=store, snapshot=str(path))

    def full(self: SnapshotFile, state: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SnapshotFile, "save", full)
    with pytest.raises(OSError, match="No space left"):
        await runtime.stop()
    assert store.closed
    assert shipper.closed


async def test_a_runtime_never_started_stops_at_once(clock: ManualClock) -> None:
    """stop() of a runtime that never started touches nothing: the store it was given stays
    open, and the runtime can still start (and stop) after it."""
    store = ClosingMemoryStore()
    runtime = Runtime(Settings(shutdown_grace=0), store=store, clock=clock)
    await runtime.stop()
    assert not store.closed
    assert not runtime.started
    await runtime.start()
    assert runtime.started
    await runtime.stop()
    assert store.closed


async def test_the_runtime_passes_the_flags_to_the_processor() -> None:
    """`processor_settings` maps each flag to its ProcessorSettings field."""
    settings = Settings(
        concurrency=3,
        process_timeout=4.5,
        max_attempts=5,
        retry_backoff=0.25,
        poll_interval=0.5,
        heartbeat_interval=1.0,
        lease_timeout=3.0,
    )
    derived = processor_settings(settings)
    assert (
        derived.concurrency,
        derived.timeout_s,
        derived.max_attempts,
        derived.retry_backoff_s,
        derived.poll_interval_s,
        derived.heartbeat_s,
        derived.lease_s,
    ) == (3, 4.5, 5, 0.25, 0.5, 1.0, 3.0)


async def test_a_started_runtime_serves_and_ships(runtime: Runtime, shipper: FakeShipper) -> None:
    """The runtime fixture serves: a submit and a trigger ship the order."""
    submitted = await runtime.service.submit("Ada", make_order().items)
    assert await runtime.service.trigger_processing() == 1

    async def shipped() -> bool:
        order = await runtime.service.get_order(submitted.order_id)
        return order.status is OrderStatus.SHIPPED

    await eventually(shipped)
    assert shipper.shipped[submitted.order_id] == 1


async def test_a_stop_stops_the_processor_even_when_ending_the_event_streams_fails(
    tmp_path: Path,
    shipper: FakeShipper,
    start_runtime: RuntimeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: `Runtime.stop` promises each step even if the one before failed, but a
    failure to end the event streams skipped the processor's stop: shipments ran on while the
    snapshot was written and the store closed under them."""
    path = tmp_path / "orders.jsonl"
    runtime = await start_runtime(snapshot=str(path))
    processor = runtime.processor
    close = runtime.events.close

    async def broken() -> None:
        await close()
        raise RuntimeError("a stream would not end")

    monkeypatch.setattr(runtime.events, "close", broken)
    try:
        with pytest.raises(RuntimeError, match="would not end"):
            await runtime.stop()
        assert shipper.closed
        assert path.exists()
        with pytest.raises(ShuttingDown):  # the processor was stopped: it takes no trigger
            await runtime.claimer.trigger()
    finally:
        await processor.stop(0)
