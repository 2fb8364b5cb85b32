"""The real `orderflow serve`, driven over HTTP as a user would."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import Server, wait_for

ORDER = {"customer": "John Doe", "items": [{"name": "Monster Energy", "quantity": 2}]}


def all_orders(client: httpx.Client) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    for _ in range(100):
        page = client.get("/orders", params=params).json()
        orders += page["orders"]
        if page["next_cursor"] is None:
            return orders
        params["cursor"] = page["next_cursor"]
    raise AssertionError("too many pages")


def statuses(client: httpx.Client) -> dict[str, str]:
    return {o["id"]: o["status"] for o in all_orders(client)}


def test_a_thousand_posts_from_fifty_threads_all_land(serve: type[Server]) -> None:
    server = serve("--log-level", "warning")

    def submit(_: int) -> str:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/orders", json=ORDER)
            assert response.status_code == 201
            order_id: str = response.json()["id"]
            return order_id

    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = list(pool.map(submit, range(1000)))
    assert len(set(ids)) == 1000
    with server.client() as client:
        listed = [o["id"] for o in all_orders(client)]
    assert sorted(listed) == sorted(ids)
    assert listed == sorted(listed)  # time order is id order
    assert server.terminate() == 0


def test_racing_triggers_cancels_and_deletes_ship_each_order_at_most_once(
    serve: type[Server],
) -> None:
    server = serve("--ship-delay", "0.05", "--ship-jitter", "0.05", "--log-level", "warning")
    with server.client() as client:
        ids = [client.post("/orders", json=ORDER).json()["id"] for _ in range(200)]

    def act(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            if n % 3 == 0:
                assert client.post("/orders/process").status_code == 202
            elif n % 3 == 1:
                status = client.post(f"/orders/{ids[n]}/cancel").status_code
                assert status in (200, 409)
            else:
                assert client.delete(f"/orders/{ids[n]}").status_code in (200, 409)

    with ThreadPoolExecutor(max_workers=30) as pool:
        list(pool.map(act, range(30)))
    with server.client() as client:
        client.post("/orders/process")
        final = wait_for(
            lambda: (s := statuses(client)) and "processing" not in s.values() and s, 60
        )
        assert final
        orders = all_orders(client)
    deleted = set(ids) - {o["id"] for o in orders}
    assert all(ids.index(d) % 3 == 2 for d in deleted)  # only deletes removed orders
    for order in orders:
        history = [h["status"] for h in order["history"]]
        assert history.count("shipped") <= 1
        assert history[0] == "pending"
        if order["status"] == "cancelled":
            assert "shipped" not in history
    assert {o["status"] for o in orders} <= {"shipped", "cancelled"}
    assert server.terminate() == 0


def test_a_timeout_shorter_than_the_shipment_fails_orders(serve: type[Server]) -> None:
    server = serve("--ship-delay", "2", "--process-timeout", "0.1", "--log-level", "warning")
    with server.client() as client:
        ids = [client.post("/orders", json=ORDER).json()["id"] for _ in range(5)]
        client.post("/orders/process")
        done = wait_for(lambda: set(statuses(client).values()) == {"failed"}, 30)
        assert done
        for order_id in ids:
            order = client.get(f"/orders/{order_id}").json()
            assert order["history"][-1] == {
                "status": "failed",
                "at": order["updated_at"],
                "reason": "timeout",
            }
    assert server.terminate() == 0


def test_sigterm_mid_processing_exits_cleanly_and_a_restart_keeps_every_order(
    serve: type[Server], tmp_path: Path
) -> None:
    snapshot = str(tmp_path / "orders.jsonl")
    options = ("--snapshot", snapshot, "--concurrency", "4", "--shutdown-grace", "0.2")
    server = serve("--ship-delay", "30", *options)
    with server.client() as client:
        ids = [client.post("/orders", json=ORDER).json()["id"] for _ in range(10)]
        assert client.post("/orders/process").json()["orders"] == 10
        assert wait_for(lambda: "processing" in statuses(client).values())
    assert server.terminate(signal.SIGTERM) == 0

    again = serve("--ship-delay", "0", *options)
    with again.client() as client:
        orders = {o["id"]: o for o in all_orders(client)}
        assert sorted(orders) == sorted(ids)
        for order in orders.values():
            assert order["status"] == "pending"
            assert order["history"][-1]["reason"].startswith("shutdown")
        client.post("/orders/process")
        assert wait_for(lambda: set(statuses(client).values()) == {"shipped"}, 30)
    assert again.terminate(signal.SIGINT) == 0


def test_version_and_help() -> None:
    from orderflow import __version__

    out = subprocess.run(
        [sys.executable, "-m", "orderflow", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "orderflow", "serve", "--concurrency", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "concurrency" in out.stderr


def test_a_second_server_on_a_busy_port_refuses_to_start(serve: type[Server]) -> None:
    """Regression: granian listens with SO_REUSEPORT, so a second server on the same port
    started and took half the connections, and half the orders, into a store of its own."""
    first = serve()
    out = subprocess.run(
        [sys.executable, "-m", "orderflow", "serve", "--port", str(first.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in out.stderr


def test_the_worker_stops_gracefully_when_serve_itself_is_killed(
    serve: type[Server], tmp_path: Path
) -> None:
    """Regression: SIGKILL on the PID of `orderflow serve` left granian's worker serving on as
    an orphan, with its orders, holding the port."""
    snapshot = tmp_path / "orders.jsonl"
    server = serve("--snapshot", str(snapshot))
    with server.client() as client:
        for _ in range(3):
            assert client.post("/orders", json=ORDER).status_code == 201
    server.process.kill()  # the supervisor only, not its process group
    server.process.wait(timeout=30)

    def port_free() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", server.port)) != 0

    assert wait_for(port_free, 30)
    assert wait_for(lambda: snapshot.exists() and len(snapshot.read_bytes().splitlines()) == 3)
