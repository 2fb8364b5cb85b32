"""Several real `orderflow serve` processes on one PostgreSQL database. What a test waits for
it observes (in the database, or over HTTP), never a sleep that hopes."""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import eventually_sync
from tests.helpers import submit
from tests.postgres import query
from tests.servers import Server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ADA = {"customer": "Ada", "items": [{"name": "Widget", "quantity": 1}]}
TIMERS = ("--heartbeat-interval", "0.3", "--lease-timeout", "1.0", "--poll-interval", "0.5")


def held_by(url: str, *servers: Server) -> dict[int, int]:
    """How many orders each server's processor holds now (its owner name holds its PID)."""
    rows = query(url, "SELECT owner FROM orders WHERE owner IS NOT NULL")
    return {
        server.process.pid: sum(f"-{server.process.pid}-" in row["owner"] for row in rows)
        for server in servers
    }


def orders_of(server: Server) -> list[dict[str, Any]]:
    with server.client() as client:
        page = client.get("/orders", params={"limit": 1000}).json()
    assert page["next_cursor"] is None
    orders: list[dict[str, Any]] = page["orders"]
    return orders


def all_shipped(server: Server, count: int) -> bool:
    orders = orders_of(server)
    return len(orders) == count and all(o["status"] == "shipped" for o in orders)


def shipped_once_in_the_database(url: str, ids: list[str]) -> None:
    """Every order shipped, once by its history and once by the event log; none held."""
    rows = query(url, "SELECT id, status, owner, history FROM orders")
    assert sorted(row["id"] for row in rows) == sorted(ids)
    for row in rows:
        assert row["status"] == "shipped", row
        assert row["owner"] is None, row
        assert row["history"].count('"shipped"') == 1, row["history"]
    events = query(url, "SELECT order_id FROM events WHERE type = 'order.shipped'")
    assert Counter(row["order_id"] for row in events) == dict.fromkeys(ids, 1)


def test_three_instances_ship_every_order_exactly_once(
    serve: type[Server], database_url: str
) -> None:
    servers = [
        serve("--database-url", database_url, "--ship-delay", "0.02", "--concurrency", "4", *TIMERS)
        for _ in range(3)
    ]
    ids = submit(servers, 150, threads=len(servers), **ADA)
    with servers[1].client() as client:
        assert client.post("/orders/process").json()["orders"] == 150
    eventually_sync(lambda: all_shipped(servers[2], 150), timeout_s=60)
    for order in orders_of(servers[0]):
        assert [h["status"] for h in order["history"]] == ["pending", "processing", "shipped"]
    shipped_once_in_the_database(database_url, ids)
    # A cancel through one instance is seen by all.
    [late] = submit(servers[:1], 1, threads=1, **ADA)
    with servers[2].client() as client:
        assert client.post(f"/orders/{late}/cancel").status_code == 200
    with servers[0].client() as client:
        assert client.get(f"/orders/status/{late}").json()["status"] == "cancelled"
    for server in servers:
        assert server.terminate() == 0


def test_a_killed_instance_loses_nothing_and_ships_nothing_twice(
    serve: type[Server], database_url: str
) -> None:
    options = ("--database-url", database_url, "--ship-delay", "0.8", "--concurrency", "8")
    victim = serve(*options, *TIMERS)
    survivor = serve(*options, *TIMERS)
    ids = submit([victim, survivor], 60, threads=2, **ADA)
    with victim.client() as client:
        assert client.post("/orders/process").json()["orders"] == 60
    # Both hold orders: shipments are in flight on each.
    eventually_sync(lambda: all(held_by(database_url, victim, survivor).values()))
    victim.kill()  # SIGKILL: no handback, its leases must run out
    killed_at = time.monotonic()
    # What it held when it died, as the database has it (a lease outlives the read).
    orphans = {
        row["id"]
        for row in query(database_url, "SELECT id, owner FROM orders WHERE owner IS NOT NULL")
        if f"-{victim.process.pid}-" in row["owner"]
    }
    assert orphans
    eventually_sync(lambda: all_shipped(survivor, 60), timeout_s=60)
    # A lease (1 s) and a heartbeat (0.3 s), then the shipments themselves (60 x 0.8 s / 8).
    assert time.monotonic() - killed_at < 30
    shipped_once_in_the_database(database_url, ids)
    for order in orders_of(survivor):
        reasons = [h.get("reason") or "" for h in order["history"]]
        rescued = any(r.startswith("rescued: the lease of ") for r in reasons)
        assert rescued == (order["id"] in orphans), (order["id"], reasons)
    assert survivor.terminate() == 0


def test_sigterm_everything_mid_processing_then_start_again(
    serve: type[Server], database_url: str
) -> None:
    options = ("--database-url", database_url, "--concurrency", "4", "--shutdown-grace", "0.2")
    servers = [serve(*options, "--ship-delay", "30", *TIMERS) for _ in range(2)]
    ids = submit(servers, 30, threads=len(servers), **ADA)
    with servers[0].client() as client:
        assert client.post("/orders/process").json()["orders"] == 30
    eventually_sync(lambda: all(held_by(database_url, *servers).values()))
    in_flight = {
        row["id"] for row in query(database_url, "SELECT id FROM orders WHERE owner IS NOT NULL")
    }
    for server in servers:
        assert server.terminate(signal.SIGTERM) == 0
    # Each handed back what it held: ready for whoever comes next, held by nobody.
    rows = query(database_url, "SELECT status, owner FROM orders")
    assert len(rows) == 30
    assert all(row["status"] == "processing" and row["owner"] is None for row in rows), rows

    again = serve(*options, "--ship-delay", "0", *TIMERS)
    eventually_sync(lambda: all_shipped(again, 30), timeout_s=60)
    shipped_once_in_the_database(database_url, ids)
    handed_back: dict[str, list[str]] = {}
    for order in orders_of(again):
        reasons = [h["reason"] for h in order["history"] if h.get("reason", "").startswith("shut")]
        if reasons:
            handed_back[order["id"]] = reasons
    assert in_flight <= handed_back.keys()  # each was handed back at the stop, saying why
    assert "shutdown: shipment interrupted" in {r for rs in handed_back.values() for r in rs}
    assert again.terminate() == 0


def instances_of(server: Server) -> list[dict[str, Any]]:
    with server.client() as client:
        response = client.get("/instances")
    assert response.status_code == 200, response.text
    instances: list[dict[str, Any]] = response.json()["instances"]
    return instances


def liveness(server: Server, *servers: Server) -> dict[int, bool]:
    """Whether each of `servers` is listed live by `server` (an instance's name holds its PID)."""
    listed = instances_of(server)
    found = {}
    for other in servers:
        [mine] = [i for i in listed if f"-{other.process.pid}-" in i["name"]]
        found[other.process.pid] = mine["live"]
    return found


def totals(server: Server) -> Counter[str]:
    with server.client() as client:
        minutes = client.get("/orders/throughput").json()["minutes"]
    counted: Counter[str] = Counter()
    for minute in minutes:
        counted.update({k: minute[k] for k in ("submitted", "shipped", "failed")})
    return counted


def test_instances_and_throughput_are_shared_and_a_stopped_instance_is_not_live(
    serve: type[Server], database_url: str
) -> None:
    first, second = (
        serve("--database-url", database_url, "--ship-delay", "0.01", *TIMERS) for _ in range(2)
    )
    submit([first, second], 40, threads=2, **ADA)
    with first.client() as client:
        assert client.post("/orders/process").json()["orders"] == 40
    eventually_sync(lambda: all_shipped(second, 40), timeout_s=60)
    # Both listed, live, by either; the counts come from the database: the same on both.
    assert liveness(first, first, second) == {first.process.pid: True, second.process.pid: True}
    assert liveness(second, first, second) == liveness(first, first, second)
    assert totals(first) == totals(second) == {"submitted": 40, "shipped": 40, "failed": 0}
    assert second.terminate() == 0  # a clean stop: listed, not live, at once
    assert liveness(first, first, second) == {first.process.pid: True, second.process.pid: False}
    assert [i["live"] for i in instances_of(first)] == [True, False]  # live ones first
    # One that dies without a word is not live once it missed its heartbeats.
    third = serve("--database-url", database_url, *TIMERS)
    assert liveness(first, third) == {third.process.pid: True}
    third.kill()
    eventually_sync(lambda: liveness(first, third) == {third.process.pid: False}, timeout_s=10)
    assert first.terminate() == 0
