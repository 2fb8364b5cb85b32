"""Snapshots: the file (header, records, trailer with a checksum), the `.loaded` mark that tells
a crash from a clean stop, and how the runtime loads and saves them."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

import orderflow.runtime as runtime_module
from orderflow.domain import Event, OrderStatus, Outcome
from orderflow.errors import SnapshotError, StartupError
from orderflow.runtime import Runtime
from orderflow.settings import Settings
from orderflow.snapshot import SnapshotFile, check_snapshot_path
from orderflow.store.base import IdempotencyRecord
from orderflow.store.memory import InMemoryOrderStore, MemoryState
from orderflow.webhooks.store import InMemoryWebhookStore
from tests.conftest import FakeShipper, ManualClock, RuntimeFactory, make_order
from tests.unit.conftest import ClosingMemoryStore


async def _busy_store(clock: ManualClock) -> InMemoryOrderStore:
    """A store with orders in every status, a shipment, an idempotency key and events."""
    store = InMemoryOrderStore()
    orders = [make_order(clock, customer=f"c{n}") for n in range(6)]
    for order in orders[:-1]:
        await store.add(order)
    await store.add(orders[-1], IdempotencyRecord("k-1", "fp", orders[-1].id, clock.now()))
    await store.transition(orders[0].id, Event.CANCEL, clock.now(), "changed my mind")
    await store.claim_pending(clock.now(), 3)  # orders 1, 2, 3
    held = {h.order.id: h.token for h in await store.acquire("me", 2, 15.0)}
    first, second = sorted(held)
    await store.write_outcomes(
        "me",
        [
            Outcome(first, held[first], Event.SHIP, clock.now(), None, {"tracking": "T1"}),
            Outcome(second, held[second], Event.FAIL, clock.now(), "refused"),
        ],
    )
    return store


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _saved(path: Path, state: MemoryState) -> bytes:
    SnapshotFile(path).save(state)
    return path.read_bytes()


# -- the file -------------------------------------------------------------------------------------


async def test_a_snapshot_round_trip_keeps_orders_keys_events_and_the_seq(
    tmp_path: Path, clock: ManualClock
) -> None:
    """save then read gives back the state: orders, keys, events, last_event_seq; no temporary file
    left."""
    store = await _busy_store(clock)
    state = store.dump()
    path = tmp_path / "orders.jsonl"
    assert SnapshotFile(path).save(state) == 6
    assert _names(tmp_path) == ["orders.jsonl"]  # no temporary file left behind
    read = SnapshotFile(path).read()
    assert read == state
    restored = InMemoryOrderStore()
    assert read is not None
    restored.load(read)
    for order in state.orders:
        assert await restored.get_order(order.id) == order
    assert (await restored.get_order(state.orders[1].id)).shipment == {"tracking": "T1"}
    assert await restored.find_idempotency("k-1") == state.idempotency[0]
    assert await restored.read_events(0, 1000) == await store.read_events(0, 1000)
    assert await restored.last_event_seq() == await store.last_event_seq()
    assert await restored.count_by_status() == await store.count_by_status()
    assert list(restored.check_invariants()) == []


async def test_the_last_seq_survives_even_when_older_events_were_pruned(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A snapshot with no event left still keeps last_event_seq."""
    store = await _busy_store(clock)
    last = await store.last_event_seq()
    assert await store.prune_events(clock.now(), keep=0) == last
    path = tmp_path / "orders.jsonl"
    SnapshotFile(path).save(store.dump())
    read = SnapshotFile(path).read()
    assert read is not None
    assert read.events == []
    assert read.last_event_seq == last


def test_no_snapshot_reads_as_nothing(tmp_path: Path) -> None:
    """No file and no mark: start empty."""
    assert SnapshotFile(tmp_path / "orders.jsonl").read() is None


def _cut_at_a_line_boundary(data: bytes) -> bytes:
    return b"".join(data.splitlines(keepends=True)[:3])


def _without_the_trailer(data: bytes) -> bytes:
    return b"".join(data.splitlines(keepends=True)[:-1])


def _cut_mid_line(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _with_a_line_twice(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join([*lines[:2], lines[1], *lines[2:]])


def _without_a_line(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join([*lines[:2], *lines[3:]])


def _edited(data: bytes) -> bytes:
    return data.replace(b'"c3"', b'"c4"', 1)


def _another_version(data: bytes) -> bytes:
    return data.replace(b'"version":2', b'"version":99', 1)


@pytest.mark.parametrize(
    "damage",
    [
        _cut_at_a_line_boundary,
        _without_the_trailer,
        _cut_mid_line,
        _with_a_line_twice,
        _without_a_line,
        _edited,
        _another_version,
        lambda data: b"",
        lambda data: b"\n",
        lambda data: b"not json at all\n",
    ],
    ids=[
        "cut-at-a-line-boundary",
        "trailer-missing",
        "cut-mid-line",
        "duplicated-line",
        "line-missing",
        "edited",
        "other-version",
        "emptied",
        "blank-line",
        "garbage",
    ],
)
async def test_a_damaged_snapshot_is_refused_naming_the_file_and_left_alone(
    tmp_path: Path, clock: ManualClock, damage: Callable[[bytes], bytes]
) -> None:
    """A snapshot cut, emptied, edited, duplicated or of another version is refused naming the file,
    and left as it was."""
    path = tmp_path / "orders.jsonl"
    data = _saved(path, (await _busy_store(clock)).dump())
    damaged = damage(data)
    assert damaged != data
    path.write_bytes(damaged)
    with pytest.raises(SnapshotError, match=re.escape(str(path))):
        SnapshotFile(path).read()
    assert path.read_bytes() == damaged
    assert not SnapshotFile(path).mark.exists()


def test_a_snapshot_that_cannot_be_read_is_refused_naming_it(tmp_path: Path) -> None:
    """A snapshot path that is a directory is refused."""
    path = tmp_path / "orders.jsonl"
    path.mkdir()
    with pytest.raises(SnapshotError, match="is a directory"):
        SnapshotFile(path).read()


def test_a_snapshot_path_that_cannot_be_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a snapshot in a folder that did not exist failed only at shutdown, and every
    order in memory was lost, with exit code 0."""
    check_snapshot_path(tmp_path / "orders.jsonl")
    with pytest.raises(SnapshotError, match="does not exist"):
        check_snapshot_path(tmp_path / "nowhere" / "orders.jsonl")
    with pytest.raises(SnapshotError, match="is a directory"):
        check_snapshot_path(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a read-only folder
    with pytest.raises(SnapshotError, match="not writable"):
        check_snapshot_path(tmp_path / "orders.jsonl")


# -- the mark -------------------------------------------------------------------------------------


async def test_a_loaded_snapshot_is_moved_aside_and_a_save_puts_a_new_one_back(
    tmp_path: Path, clock: ManualClock
) -> None:
    """read + mark_loaded moves the file to PATH.loaded; save writes PATH and removes the mark."""
    path = tmp_path / "orders.jsonl"
    state = (await _busy_store(clock)).dump()
    data = _saved(path, state)
    snapshot = SnapshotFile(path)
    assert snapshot.mark == tmp_path / "orders.jsonl.loaded"
    assert snapshot.read() == state
    snapshot.mark_loaded()
    assert not path.exists()
    assert snapshot.mark.read_bytes() == data
    empty = MemoryState([], [], [], 0)
    assert snapshot.save(empty) == 0
    assert not snapshot.mark.exists()
    assert SnapshotFile(path).read() == empty


async def test_a_start_that_finds_only_the_mark_refuses_unless_told_to_recover(
    tmp_path: Path, clock: ManualClock
) -> None:
    """The last run crashed: what it loaded may have shipped since."""
    path = tmp_path / "orders.jsonl"
    state = (await _busy_store(clock)).dump()
    _saved(path, state)
    crashed = SnapshotFile(path)
    crashed.read()
    crashed.mark_loaded()  # … and the run never stopped cleanly
    with pytest.raises(SnapshotError, match=r"--snapshot-recover") as refused:
        SnapshotFile(path).read()
    assert str(crashed.mark) in str(refused.value)
    assert SnapshotFile(path, recover=True).read() == state


def test_a_run_that_started_empty_leaves_an_empty_mark(tmp_path: Path) -> None:
    """A start with no snapshot leaves an empty mark: a crash is still told from a clean stop."""
    path = tmp_path / "orders.jsonl"
    snapshot = SnapshotFile(path)
    assert snapshot.read() is None
    snapshot.mark_loaded()
    assert not path.exists()
    assert snapshot.mark.exists()
    with pytest.raises(SnapshotError, match="did not stop cleanly"):
        SnapshotFile(path).read()
    assert SnapshotFile(path, recover=True).read() == MemoryState([], [], [], 0)


async def test_unmark_puts_the_snapshot_back_after_a_failed_start(
    tmp_path: Path, clock: ManualClock
) -> None:
    """unmark undoes mark_loaded (and does nothing when nothing was marked)."""
    path = tmp_path / "orders.jsonl"
    data = _saved(path, (await _busy_store(clock)).dump())
    snapshot = SnapshotFile(path)
    snapshot.unmark()  # nothing marked: nothing to undo
    assert path.read_bytes() == data
    snapshot.read()
    snapshot.mark_loaded()
    snapshot.unmark()
    assert path.read_bytes() == data
    assert not snapshot.mark.exists()
    assert SnapshotFile(path).read() is not None  # as if nothing had happened


async def test_with_both_the_snapshot_and_the_mark_the_snapshot_is_used(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A clean stop wrote the snapshot and stopped before it removed the mark."""
    path = tmp_path / "orders.jsonl"
    new = MemoryState([], [], [], 42)
    data = _saved(path, new)
    stale = SnapshotFile(path).mark
    stale.write_bytes(_saved(tmp_path / "old.jsonl", (await _busy_store(clock)).dump()))
    snapshot = SnapshotFile(path)
    assert snapshot.read() == new
    snapshot.mark_loaded()  # the snapshot takes the place of the stale mark
    assert not path.exists()
    assert stale.read_bytes() == data


# -- through the runtime --------------------------------------------------------------------------


async def test_a_processing_order_in_the_snapshot_comes_back_pending_with_a_reason(
    tmp_path: Path, clock: ManualClock, start_runtime: RuntimeFactory
) -> None:
    """Through Runtime: a processing order comes back pending ("restart: was processing"); keys and
    the seq are kept."""
    source = await _busy_store(clock)
    state = source.dump()
    path = tmp_path / "orders.jsonl"
    _saved(path, state)
    store = InMemoryOrderStore()
    await start_runtime(store=store, snapshot=str(path))
    assert not path.exists()  # moved aside while the service runs
    for before in state.orders:
        after = await store.get_order(before.id)
        if before.status is OrderStatus.PROCESSING:
            assert after.status is OrderStatus.PENDING
            assert after.history[:-1] == before.history
            assert after.history[-1].reason == "restart: was processing"
        else:
            assert after == before
    counts = await store.count_by_status()
    assert counts[OrderStatus.PROCESSING] == 0
    assert counts[OrderStatus.PENDING] == 3
    assert await store.find_idempotency("k-1") is not None
    assert await store.last_event_seq() == await source.last_event_seq()
    assert list(store.check_invariants()) == []


async def test_a_clean_stop_saves_what_the_next_start_loads(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Through Runtime: a clean stop saves orders and keys, and the next start loads them."""
    path = tmp_path / "orders.jsonl"
    settings = Settings(snapshot=str(path), shutdown_grace=0)
    first = Runtime(settings, store=InMemoryOrderStore(), shipper=FakeShipper(), clock=clock)
    await first.start()
    submitted = await first.service.submit("Ada", make_order().items, idempotency_key="k-9")
    await first.stop()
    assert path.exists()
    assert not SnapshotFile(path).mark.exists()
    store = InMemoryOrderStore()
    second = Runtime(settings, store=store, shipper=FakeShipper(), clock=clock)
    await second.start()
    try:
        assert (await store.get_order(submitted.order_id)).status is OrderStatus.PENDING
        replay = await second.service.submit("Ada", make_order().items, idempotency_key="k-9")
        assert replay.replayed
    finally:
        await second.stop()


async def test_a_start_after_a_crash_refuses_unless_told_to_recover(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Runtime: after a run that never saved, a start refuses (closing its store) unless
    snapshot_recover."""
    path = tmp_path / "orders.jsonl"
    _saved(path, (await _busy_store(clock)).dump())
    crashed = Runtime(
        Settings(snapshot=str(path), shutdown_grace=0),
        store=InMemoryOrderStore(),
        shipper=FakeShipper(),
        clock=clock,
    )
    await crashed.start()

    def die(self: SnapshotFile, state: MemoryState) -> int:
        raise SystemError("killed before the snapshot was written")

    with monkeypatch.context() as patch:
        patch.setattr(SnapshotFile, "save", die)
        with pytest.raises(SystemError):
            await crashed.stop()
    refused_store = ClosingMemoryStore()
    refused = Runtime(Settings(snapshot=str(path)), store=refused_store, clock=clock)
    with pytest.raises(StartupError, match=r"^--snapshot: .*--snapshot-recover"):
        await refused.start()
    assert refused_store.closed
    assert len(refused_store) == 0
    store = InMemoryOrderStore()
    recovered = Runtime(
        Settings(snapshot=str(path), snapshot_recover=True, shutdown_grace=0),
        store=store,
        shipper=FakeShipper(),
        clock=clock,
    )
    await recovered.start()
    try:
        assert len(store) == 6
    finally:
        await recovered.stop()
    assert path.exists()
    assert not SnapshotFile(path).mark.exists()


async def test_a_snapshot_order_whose_id_is_not_its_time_is_refused(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Stores answer time ranges with id ranges, so an id must encode its order's time."""
    order = make_order(clock)
    forged = msgspec.structs.replace(order, id=make_order(clock).id)
    path = tmp_path / "orders.jsonl"
    data = _saved(path, MemoryState([forged], [], [], 0))
    store = ClosingMemoryStore()
    runtime = Runtime(Settings(snapshot=str(path)), store=store, shipper=FakeShipper(), clock=clock)
    with pytest.raises(StartupError, match="not its time"):
        await runtime.start()
    assert store.closed
    assert path.read_bytes() == data  # left where it was
    assert not SnapshotFile(path).mark.exists()


async def test_a_damaged_snapshot_fails_the_start_closes_the_store_it_opened_and_stays(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "orders.jsonl"
    data = _edited(_saved(path, (await _busy_store(clock)).dump()))
    path.write_bytes(data)
    opened: list[ClosingMemoryStore] = []

    async def open_stores(settings: Settings) -> tuple[ClosingMemoryStore, InMemoryWebhookStore]:
        opened.append(ClosingMemoryStore())
        return opened[-1], InMemoryWebhookStore()

    monkeypatch.setattr(runtime_module, "open_stores", open_stores)
    runtime = Runtime(Settings(snapshot=str(path)), clock=clock)
    with pytest.raises(
        StartupError, match=f"^--snapshot: the snapshot {re.escape(str(path))} is damaged"
    ):
        await runtime.start()
    [store] = opened
    assert store.closed
    assert path.read_bytes() == data
    assert not SnapshotFile(path).mark.exists()


async def test_a_start_that_fails_after_loading_puts_the_snapshot_back(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A start that fails after the snapshot was moved aside puts it back and closes the store."""
    path = tmp_path / "orders.jsonl"
    data = _saved(path, (await _busy_store(clock)).dump())
    store = ClosingMemoryStore()
    runtime = Runtime(
        Settings(snapshot=str(path), shipper="carrier-pigeon"), store=store, clock=clock
    )
    with pytest.raises(StartupError, match=r"^--shipper: "):
        await runtime.start()
    assert store.closed
    assert path.read_bytes() == data
    assert not SnapshotFile(path).mark.exists()


async def test_a_snapshot_folder_that_does_not_exist_fails_the_start(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A --snapshot in a folder that does not exist fails the start, naming the flag."""
    path = tmp_path / "nowhere" / "orders.jsonl"
    store = ClosingMemoryStore()
    runtime = Runtime(Settings(snapshot=str(path)), store=store, clock=clock)
    with pytest.raises(StartupError, match=r"^--snapshot: the folder .* does not exist"):
        await runtime.start()
    assert store.closed
