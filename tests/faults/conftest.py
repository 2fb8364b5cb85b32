"""What the fault-injection suite needs: a `cluster` of real `orderflow serve` processes
(tests/servers.py; ended by PID) whose shipper records every shipment in a file, with the
`proxy` (tests/conftest.py) between them and PostgreSQL, and the invariants checked from the
database after every fault."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually_sync
from tests.helpers import submit as submit_orders
from tests.postgres import query
from tests.servers import Server

# Fast timers, so that a lease runs out in well under a second.
TIMERS = ("--heartbeat-interval", "0.2", "--lease-timeout", "0.6", "--poll-interval", "0.2")
LEASE_S = 0.6
HEARTBEAT_S = 0.2
RECORDER = "python:tests.faults.recorder:ship"


# The answer of a statement that committed: its CommandComplete tag, then ReadyForQuery, which
# PostgreSQL sends only once the implicit transaction of the statement committed.
def committed_answer(tag: bytes) -> re.Pattern[bytes]:
    """`tag` is a regex of the tag (b"UPDATE [1-9]": an UPDATE that changed rows)."""
    return re.compile(tag + rb"[^\x00]*\x00Z\x00\x00\x00\x05I")


class Cluster:
    """Starts instances for a test and ends them (by the PIDs it started) at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.shipments = tmp_path / "shipments.log"
        self.shipments.touch()
        self.instances: list[Server] = []

    def start(self, *args: str, delay_s: float = 0.05, **env: str) -> Server:
        environ = {"RECORDER_FILE": str(self.shipments), "RECORDER_DELAY": str(delay_s), **env}
        log = self.tmp_path / f"instance-{len(self.instances)}.log"
        instance = Server(*args, log_path=log, env=environ)
        self.instances.append(instance)
        return instance

    def shipped(self) -> Counter[str]:
        """How many times each order reached the carrier (the recorder's file)."""
        return Counter(self.shipments.read_text().split())

    def close(self) -> None:
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.kill()
        for instance in self.instances:
            assert not instance.statuses[500], f"a 500 was answered: {instance.statuses}"
            assert "unhandled error" not in instance.output(), instance.output()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()


def histories(url: str) -> dict[str, list[str]]:
    rows = query(url, "SELECT id, history FROM orders")
    return {row["id"]: [entry["status"] for entry in json.loads(row["history"])] for row in rows}


def check_invariants(url: str, accepted: list[str], *, settle_s: float = LEASE_S * 10) -> None:
    """From the database: nothing that got a 201 is lost; no order has two `shipped` entries or
    a shipment after a cancel; nothing stays processing once the fault is over (within
    `settle_s`: lease + heartbeats + the shipments themselves)."""

    def nothing_processing() -> bool:
        return not query(url, "SELECT id FROM orders WHERE status = 'processing'")

    eventually_sync(nothing_processing, timeout_s=settle_s)
    seen = histories(url)
    missing = set(accepted) - set(seen)
    assert not missing, f"{len(missing)} accepted orders are lost"
    for order_id, statuses in seen.items():
        assert statuses.count("shipped") <= 1, (order_id, statuses)
        if "cancelled" in statuses:
            assert "shipped" not in statuses, (order_id, statuses)
        assert statuses[0] == "pending", (order_id, statuses)


# Orders submitted one after the other, as "c0", "c1", …: one widget each.
submit = functools.partial(
    submit_orders, threads=1, customer="c{n}", items=[{"name": "W", "quantity": 1}]
)


def wait_until_held(url: str, at_least: int = 1) -> None:
    """Until at least `at_least` orders are held by an instance (shipments under way)."""
    eventually_sync(
        lambda: len(query(url, "SELECT id FROM orders WHERE owner IS NOT NULL")) >= at_least,
        timeout_s=20,
        interval_s=0.01,
    )


def wait_for(condition: Any, timeout_s: float = 20) -> Any:
    return eventually_sync(condition, timeout_s=timeout_s, interval_s=0.02)
