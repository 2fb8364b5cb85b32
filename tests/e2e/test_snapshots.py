"""Snapshots honest about crashes, end to end: loaded once (moved aside while the service runs),
refused after a crash unless told to recover, refused when damaged, and never altered then."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import eventually_sync
from tests.e2e.conftest import all_orders, start_refused
from tests.helpers import submit
from tests.servers import Server

pytestmark = pytest.mark.e2e


def mark_of(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + ".loaded")


def test_a_snapshot_is_never_loaded_twice_after_a_crash(
    serve: type[Server], tmp_path: Path
) -> None:
    """The issue: a clean stop with 500 orders pending, a restart that shipped them all, a
    crash, and a restart: the 500 were pending again, and shipped again."""
    snapshot = tmp_path / "orders.jsonl"
    flags = ("--snapshot", str(snapshot), "--ship-delay", "0", "--log-level", "warning")
    first = serve(*flags)
    ids = submit(first, 500)
    assert first.terminate() == 0
    assert snapshot.exists()
    assert not mark_of(snapshot).exists()

    second = serve(*flags)
    assert not snapshot.exists()  # moved aside while the service runs
    assert mark_of(snapshot).exists()
    with second.client() as client:
        assert client.post("/orders/process").json()["orders"] == 500
        eventually_sync(lambda: client.get("/orders/stats").json()["by_status"]["shipped"] == 500)
    second.kill()  # a crash: no snapshot written

    loaded = mark_of(snapshot).read_bytes()
    message = start_refused(*flags)
    assert "orderflow: --snapshot:" in message
    assert "--snapshot-recover" in message
    assert str(mark_of(snapshot)) in message
    assert mark_of(snapshot).read_bytes() == loaded  # left as it was
    assert not snapshot.exists()

    recovered = serve(*flags, "--snapshot-recover")
    with recovered.client() as client:
        orders = all_orders(client)
    assert sorted(o["id"] for o in orders) == sorted(ids)
    # Recovering loads what the crashed run loaded at its start: its 500 orders are pending
    # again, as the refusal warned (they may ship again). Nothing accepted is lost.
    assert {o["status"] for o in orders} == {"pending"}
    assert recovered.terminate() == 0
    assert snapshot.exists()
    assert not mark_of(snapshot).exists()


@pytest.mark.parametrize(
    "damage", ["cut at a line boundary", "emptied", "a line twice", "not a snapshot"]
)
def test_a_damaged_snapshot_is_refused_naming_the_file_and_left_untouched(
    snapshot_lines: list[bytes], tmp_path: Path, damage: str
) -> None:
    lines = snapshot_lines
    assert len(lines) > 4  # a header, 5 orders and their events, a trailer
    damaged = {
        "cut at a line boundary": b"".join(lines[:-2]),
        "emptied": b"",
        "a line twice": b"".join([*lines[:2], lines[1], *lines[2:]]),
        "not a snapshot": b'{"orders": []}\n',
    }[damage]
    snapshot = tmp_path / "orders.jsonl"
    snapshot.write_bytes(damaged)
    message = start_refused("--snapshot", str(snapshot))
    assert message.startswith("orderflow: --snapshot:")
    assert str(snapshot) in message
    assert "damaged" in message
    assert snapshot.read_bytes() == damaged  # left as it was, for the user to look at
    assert not mark_of(snapshot).exists()


def test_an_intact_snapshot_of_the_same_lines_loads(
    snapshot_lines: list[bytes], serve: type[Server], tmp_path: Path
) -> None:
    """The damage above is what the start refuses: the very same lines, intact, load."""
    snapshot = tmp_path / "orders.jsonl"
    snapshot.write_bytes(b"".join(snapshot_lines))
    server = serve("--snapshot", str(snapshot))
    with server.client() as client:
        assert len(all_orders(client)) == 5
    assert server.terminate() == 0
