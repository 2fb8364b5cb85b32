from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from orderflow.cli import main
from orderflow.domain import Event, OrderStatus, advance
from orderflow.settings import DEFAULTS, load_settings, settings_to_env
from orderflow.snapshot import check_snapshot_path, load_snapshot, save_snapshot
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import ManualClock, make_order


def test_settings_come_from_env_then_overrides() -> None:
    env = {"ORDERFLOW_PORT": "9000", "ORDERFLOW_AUTO_PROCESS": "true", "ORDERFLOW_HOST": ""}
    settings = load_settings(env, ship_delay=0.25, concurrency=None)
    assert settings.port == 9000
    assert settings.auto_process is True
    assert settings.ship_delay == 0.25
    assert settings.host == DEFAULTS.host
    assert settings.concurrency == DEFAULTS.concurrency


def test_settings_round_trip_through_the_environment() -> None:
    settings = load_settings({}, port=1234, snapshot="x.jsonl", auto_process=True)
    assert load_settings(settings_to_env(settings)) == settings


@pytest.mark.parametrize(
    "env",
    [
        {"ORDERFLOW_PORT": "eighty"},
        {"ORDERFLOW_CONCURRENCY": "0"},
        {"ORDERFLOW_SHIP_DELAY": "-1"},
        {"ORDERFLOW_LOG_LEVEL": "loud"},
        {"ORDERFLOW_LEASE_TIMEOUT": "1", "ORDERFLOW_HEARTBEAT_INTERVAL": "1"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid setting"):
        load_settings(env)


async def test_snapshot_round_trip_keeps_every_order(tmp_path: Path) -> None:
    clock = ManualClock()
    store = InMemoryOrderStore()
    orders = [make_order(clock, customer=f"c{n}") for n in range(25)]
    for order in orders:
        await store.add(order)
    await store.transition(orders[0].id, Event.CANCEL, clock.now())
    path = tmp_path / "orders.jsonl"
    assert await save_snapshot(store, path) == 25
    restored = InMemoryOrderStore()
    assert await load_snapshot(restored, path, clock) == 25
    for order in orders:
        assert await restored.get_order(order.id) == await store.get_order(order.id)
    assert not list(path.parent.glob(".*.tmp"))


async def test_snapshot_puts_processing_orders_back_to_pending(tmp_path: Path) -> None:
    clock = ManualClock()
    store = InMemoryOrderStore()
    order = advance(make_order(clock), Event.START, clock.now())
    await store.add(order)
    path = tmp_path / "orders.jsonl"
    await save_snapshot(store, path)
    restored = InMemoryOrderStore()
    await load_snapshot(restored, path, clock)
    back = await restored.get_order(order.id)
    assert back.status is OrderStatus.PENDING
    assert back.history[-1].reason is not None
    assert "restart" in back.history[-1].reason


async def test_missing_snapshot_loads_nothing(tmp_path: Path) -> None:
    assert await load_snapshot(InMemoryOrderStore(), tmp_path / "none", ManualClock()) == 0


async def test_a_damaged_snapshot_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b'{"id": "order_1"\n')
    with pytest.raises(ValueError, match="damaged"):
        await load_snapshot(InMemoryOrderStore(), path, ManualClock())
    assert path.read_bytes() == b'{"id": "order_1"\n'


def test_a_snapshot_path_that_cannot_be_written_is_refused_at_start(tmp_path: Path) -> None:
    """Regression: a snapshot in a folder that did not exist failed only at shutdown, and every
    order in memory was lost, with exit code 0."""
    check_snapshot_path(tmp_path / "orders.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        check_snapshot_path(tmp_path / "nowhere" / "orders.jsonl")
    with pytest.raises(ValueError, match="directory"):
        check_snapshot_path(tmp_path)
    result = CliRunner().invoke(main, ["serve", "--snapshot", str(tmp_path / "no" / "s.jsonl")])
    assert result.exit_code == 2
    assert "--snapshot" in result.output
    assert "does not exist" in result.output


async def test_a_snapshot_order_whose_id_is_not_its_time_is_refused(tmp_path: Path) -> None:
    """Stores answer time ranges with id ranges, so an id must encode its order's time."""
    clock = ManualClock()
    order = make_order(clock)
    forged = msgspec.structs.replace(order, id=make_order(clock).id)
    path = tmp_path / "orders.jsonl"
    path.write_bytes(msgspec.json.encode(forged) + b"\n")
    with pytest.raises(ValueError, match="not its time"):
        await load_snapshot(InMemoryOrderStore(), path, clock)
