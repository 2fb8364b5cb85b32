"""The real `orderflow serve`, driven over HTTP as a user would: a load of submits, racing
triggers, cancels and deletes, timeouts, a clean stop mid-processing, and a crash."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import eventually_sync
from tests.e2e.conftest import all_orders, statuses
from tests.helpers import http_client, is_listening, submit
from tests.servers import Server

pytestmark = pytest.mark.e2e


# -- under load ---------------------------------------------------------------------------------


def test_a_thousand_posts_from_fifty_threads_all_land(serve: type[Server]) -> None:
    server = serve("--log-level", "warning")
    ids = submit(server, 1000, threads=50)
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
    ids = submit(server, 200)

    def act(n: int) -> None:
        with http_client(server.url) as client:
            if n % 3 == 0:
                assert client.post("/orders/process").status_code == 202
            elif n % 3 == 1:
                assert client.post(f"/orders/{ids[n]}/cancel").status_code in (200, 409)
            else:
                assert client.delete(f"/orders/{ids[n]}").status_code in (200, 409)

    with ThreadPoolExecutor(max_workers=30) as pool:
        list(pool.map(act, range(30)))
    with server.client() as client:
        client.post("/orders/process")
        eventually_sync(lambda: "processing" not in statuses(client).values(), timeout_s=60)
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
    ids = submit(server, 5)
    with server.client() as client:
        client.post("/orders/process")
        eventually_sync(lambda: set(statuses(client).values()) == {"failed"})
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
    ids = submit(server, 10)
    with server.client() as client:
        assert client.post("/orders/process").json()["orders"] == 10
        eventually_sync(lambda: list(statuses(client).values()).count("processing") == 10)
    assert server.terminate(signal.SIGTERM) == 0

    again = serve("--ship-delay", "0", *options)
    with again.client() as client:
        orders = {o["id"]: o for o in all_orders(client)}
        assert sorted(orders) == sorted(ids)
        for order in orders.values():
            assert order["status"] == "pending"
            assert order["history"][-1]["reason"].startswith("shutdown")
        client.post("/orders/process")
        eventually_sync(lambda: set(statuses(client).values()) == {"shipped"})
    assert again.terminate(signal.SIGINT) == 0


# -- a crash ------------------------------------------------------------------------------------


def test_sigkill_of_serve_leaves_nothing_listening_on_its_port(serve: type[Server]) -> None:
    """There is no separate granian worker any more: SIGKILL of the PID of `orderflow serve`
    alone (not its process group) leaves no process behind, and the port is free at once."""
    server = serve()
    submit(server, 3)
    server.process.kill()  # the PID only: whatever else the group holds would survive
    server.process.wait(timeout=30)
    with pytest.raises(ProcessLookupError):  # nobody is left in the group it started
        os.killpg(server.process.pid, 0)
    assert not is_listening(server.port)
    again = serve(port=server.port)  # binds it at once
    with again.client() as client:
        assert all_orders(client) == []  # a fresh store: nobody kept the old one alive
    assert again.terminate() == 0
