"""Several real `orderflow serve` processes on one PostgreSQL database."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.e2e.conftest import Server, wait_for

ORDER = {"customer": "Ada", "items": [{"name": "Widget", "quantity": 1}]}
TIMERS = ("--heartbeat-interval", "0.3", "--lease-timeout", "1.0", "--poll-interval", "0.5")


def orders_of(server: Server) -> list[dict[str, Any]]:
    with server.client() as client:
        page = client.get("/orders", params={"limit": 1000}).json()
        assert page["next_cursor"] is None
        orders: list[dict[str, Any]] = page["orders"]
        return orders


def all_shipped(server: Server, count: int) -> bool:
    orders = orders_of(server)
    return len(orders) == count and all(o["status"] == "shipped" for o in orders)


def submit(servers: list[Server], count: int) -> list[str]:
    def one(n: int) -> str:
        with httpx.Client(base_url=servers[n % len(servers)].url, timeout=30) as client:
            response = client.post("/orders", json=ORDER)
            assert response.status_code == 201
            order_id: str = response.json()["id"]
            return order_id

    with ThreadPoolExecutor(max_workers=12) as pool:
        return list(pool.map(one, range(count)))


def shipped_once(order: dict[str, Any]) -> bool:
    return [h["status"] for h in order["history"]].count("shipped") == 1


def test_three_instances_ship_every_order_exactly_once(
    serve: type[Server], database_url: str
) -> None:
    servers = [
        serve("--database-url", database_url, "--ship-delay", "0.02", "--concurrency", "4", *TIMERS)
        for _ in range(3)
    ]
    ids = submit(servers, 150)
    with servers[1].client() as client:
        assert client.post("/orders/process").json()["orders"] == 150
    assert wait_for(lambda: all_shipped(servers[2], 150), 60)
    orders = orders_of(servers[0])
    assert sorted(o["id"] for o in orders) == sorted(ids)
    for order in orders:
        assert shipped_once(order)
        assert [h["status"] for h in order["history"]] == ["pending", "processing", "shipped"]
    # a cancel through one instance is seen by all
    [late] = submit(servers[:1], 1)
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
    ids = submit([victim, survivor], 60)
    with victim.client() as client:
        assert client.post("/orders/process").json()["orders"] == 60
    time.sleep(0.3)  # shipments are in flight on both
    victim.kill()  # SIGKILL: no handback, its leases must run out
    killed_at = time.monotonic()
    assert wait_for(lambda: all_shipped(survivor, 60), 60)
    recovered_in = time.monotonic() - killed_at
    orders = orders_of(survivor)
    assert sorted(o["id"] for o in orders) == sorted(ids)
    assert all(shipped_once(o) for o in orders)
    rescued = [o for o in orders if any("rescued" in (h.get("reason") or "") for h in o["history"])]
    assert rescued, "the killed instance held orders; they should have been rescued"
    # lease 1.0 s + one heartbeat 0.3 s, then the shipments themselves (60 x 0.8 s / 8)
    assert recovered_in < 30
    assert survivor.terminate() == 0


def test_sigterm_everything_mid_processing_then_start_again(
    serve: type[Server], database_url: str
) -> None:
    options = ("--database-url", database_url, "--concurrency", "4", "--shutdown-grace", "0.2")
    servers = [serve(*options, "--ship-delay", "30", *TIMERS) for _ in range(2)]
    ids = submit(servers, 30)
    with servers[0].client() as client:
        assert client.post("/orders/process").json()["orders"] == 30
    assert wait_for(lambda: any(o["status"] == "processing" for o in orders_of(servers[0])), 10)
    for server in servers:
        assert server.terminate(signal.SIGTERM) == 0

    again = serve(*options, "--ship-delay", "0", *TIMERS)
    assert wait_for(lambda: all_shipped(again, 30), 60)
    orders = orders_of(again)
    assert sorted(o["id"] for o in orders) == sorted(ids)
    assert all(shipped_once(o) for o in orders)
    assert again.terminate() == 0
