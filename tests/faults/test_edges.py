"""Faults at the edges: answers lost between orderflow and PostgreSQL while a client waits,
silent and stalled clients, hostile input on raw sockets, and snapshots a crash left behind."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.faultproxy import FaultProxy
from tests.faults.conftest import (
    RECORDER,
    TIMERS,
    Cluster,
    check_invariants,
    submit,
    wait_for,
)
from tests.postgres import query

ORDER = {"customer": "Ada", "items": [{"name": "Widget", "quantity": 1}]}


def raw(port: int, request: bytes, *, half_close: bool = False, timeout_s: float = 10) -> bytes:
    """Send `request` bytes on a new connection; the answer's bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"content-length: " in answer.lower():
                head, _, body = answer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return answer


@pytest.mark.postgres
@pytest.mark.e2e
def test_an_insert_whose_answer_was_lost_is_confirmed_or_said_unknown(
    cluster: Cluster, proxy: FaultProxy, database_url: str
) -> None:
    """Problem 3: a committed INSERT whose connection broke was a plain 503, and a client that
    retried created a duplicate. Now the service looks: a committed order is a 201; an outcome
    it cannot establish is a 503 whose type ends in outcome-unknown; and the same request with
    the same Idempotency-Key is always safe to repeat."""
    url = proxy.url_for(database_url)
    instance = cluster.start("--database-url", url, *TIMERS)
    submit(instance, 1)  # warm: the pool's connections exist
    # The INSERT's answer is lost after it committed: its one value, a bigint 1 (asyncpg's
    # fetchval reads one row: PortalSuspended), then ReadyForQuery once committed.
    inserted = b"D\x00\x00\x00\x12\x00\x01\x00\x00\x00\x08" + (1).to_bytes(8, "big")
    lost = proxy.cut_before(
        inserted + b"s\x00\x00\x00\x04Z\x00\x00\x00\x05I", direction="server_to_client"
    )
    response = instance.request("POST", "/orders", json=ORDER, headers={"idempotency-key": "k-1"})
    assert lost.is_set()
    assert response.status_code == 201, response.text  # looked, on a new connection: it is there
    created = response.json()["id"]
    again = instance.request("POST", "/orders", json=ORDER, headers={"idempotency-key": "k-1"})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == created

    # The INSERT never reaches the server: the service cannot tell, and says so.
    unsent = proxy.cut_before(b"k-2", direction="client_to_server")
    other = {"customer": "Bob", "items": [{"name": "W", "quantity": 1}]}
    response = instance.request("POST", "/orders", json=other, headers={"idempotency-key": "k-2"})
    assert unsent.is_set()
    assert response.status_code == 503, response.text
    assert response.json()["type"].endswith("outcome-unknown")
    assert int(response.headers["retry-after"]) >= 1
    retried = instance.request("POST", "/orders", json=other, headers={"idempotency-key": "k-2"})
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    rows = query(database_url, "SELECT id, customer FROM orders ORDER BY id")
    assert [(row["customer"]) for row in rows] == ["c0", "Ada", "Bob"]


@pytest.mark.postgres
@pytest.mark.e2e
def test_a_cancel_and_a_delete_that_committed_are_not_reported_as_failed(
    cluster: Cluster, proxy: FaultProxy, database_url: str
) -> None:
    url = proxy.url_for(database_url)
    instance = cluster.start("--database-url", url, *TIMERS)
    first, second = submit(instance, 2)
    proxy.cut_after(b"RESET ALL")  # the cancel commits; its connection breaks on release
    assert instance.request("POST", f"/orders/{first}/cancel").status_code == 200
    proxy.cut_after(b"RESET ALL")
    assert instance.request("DELETE", f"/orders/{second}").status_code == 200
    assert [r["status"] for r in query(database_url, "SELECT status FROM orders")] == ["cancelled"]
    check_invariants(database_url, [first])


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["memory", "postgres"])
def test_a_thousand_silent_connections_do_not_keep_a_new_client_out(
    cluster: Cluster, database_url: str, store: str
) -> None:
    """Problem 6: granian accepted at most its backlog of connections per worker, and a
    connection that sent nothing was never timed out: 1,024 silent sockets took the service
    down for every new client. Now the server takes many more connections than that (and, on
    Linux, is handed a connection only once it sent something)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    try:
        args = ("--database-url", database_url) if store == "postgres" else ()
        instance = cluster.start(*args, "--http-idle-timeout", "30")
        silent = [socket.create_connection(("127.0.0.1", instance.port)) for _ in range(1500)]
        try:
            began = time.monotonic()
            assert httpx.get(instance.url + "/healthz", timeout=5).status_code == 200
            waited = time.monotonic() - began
            assert waited < 1.0, waited
            assert instance.request("POST", "/orders", json=ORDER).status_code == 201
        finally:
            for sock in silent:
                sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.e2e
def test_a_body_that_stalls_is_timed_out_and_stores_nothing(cluster: Cluster) -> None:
    instance = cluster.start("--http-idle-timeout", "1")
    began = time.monotonic()
    answer = raw(
        instance.port,
        b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 60\r\n\r\n{"customer":',
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - began < 5
    assert instance.request("GET", "/orders").json()["count"] == 0


@pytest.mark.e2e
def test_hostile_input_on_raw_sockets_gets_a_4xx_and_changes_nothing(
    cluster: Cluster, database_url: str
) -> None:
    """Problem 7, on the real server (RSGI) and PostgreSQL: a NUL in an id is a 404, not a 503
    from the database; a body shorter than its Content-Length whose client half-closes is a 400
    and is not stored; a page of another origin cannot change anything; a foreign Host (DNS
    rebinding) is refused."""
    instance = cluster.start("--database-url", database_url)
    [order_id] = submit(instance, 1)
    host = b"Host: 127.0.0.1\r\n"
    assert raw(instance.port, b"GET /orders/order_%00x HTTP/1.1\r\n" + host + b"\r\n").startswith(
        b"HTTP/1.1 404"
    )
    assert instance.request("GET", f"/orders/{order_id}%00").status_code == 404
    short = raw(
        instance.port,
        b"POST /orders HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
        + b'{"customer": "Bob", "items": [{"name": "W", "quantity": 1}]}',
        half_close=True,
    )
    assert short.startswith(b"HTTP/1.1 400"), short
    foreign = {"origin": "http://evil.example"}
    assert instance.request("POST", "/orders/process", headers=foreign).status_code == 403
    cancel = instance.request(
        "POST", f"/orders/{order_id}/cancel", headers={**foreign, "content-type": "text/plain"}
    )
    assert cancel.status_code == 403
    assert instance.request("GET", "/orders", headers={"host": "evil.example"}).status_code == 421
    rows = query(database_url, "SELECT customer, status FROM orders")
    assert [(r["customer"], r["status"]) for r in rows] == [("c0", "pending")]


@pytest.mark.e2e
def test_an_encoded_slash_stays_inside_the_id_under_asgi(cluster: Cluster) -> None:
    """Problem 7: `%2F` in an id acted as a path separator, so `POST /orders/{id}%2Fcancel`
    cancelled. Routing is on the raw path where the server gives it (ASGI's raw_path): the
    request is a 404 and the order stays pending. (Granian's RSGI decodes the path before the
    app sees it; see the README.)"""
    instance = cluster.start("--server", "uvicorn")
    [order_id] = submit(instance, 1)
    # 404 for a GET: no such order; 405 for the POST: /orders/{id} takes no POST.
    assert instance.request("GET", f"/orders/{order_id}%2Fcancel").status_code == 404
    assert instance.request("POST", f"/orders/{order_id}%2Fcancel").status_code == 405
    assert instance.request("GET", f"/orders/status/{order_id}").json()["status"] == "pending"


@pytest.mark.e2e
def test_a_snapshot_is_never_loaded_twice(cluster: Cluster, tmp_path: Path) -> None:
    """Problem 4: clean stop with orders pending, restart, ship them all, crash, restart: the
    orders were pending again, and shipped again. Now the snapshot is moved aside when loaded,
    and a start after a crash refuses until told to recover."""
    snapshot = tmp_path / "orders.jsonl"
    first = cluster.start("--snapshot", str(snapshot), "--shipper", RECORDER)
    ids = submit(first, 50)
    assert first.stop() == 0
    second = cluster.start("--snapshot", str(snapshot), "--shipper", RECORDER)
    assert second.request("POST", "/orders/process").json()["orders"] == 50
    wait_for(lambda: second.request("GET", "/orders/stats").json()["by_status"]["shipped"] == 50)
    second.kill()  # a crash: no snapshot written
    refused = _start_fails(cluster, "--snapshot", str(snapshot))
    assert "did not stop cleanly" in refused
    assert "--snapshot-recover" in refused
    third = cluster.start("--snapshot", str(snapshot), "--snapshot-recover", "--shipper", RECORDER)
    page = third.request("GET", "/orders", params={"limit": 1000}).json()
    assert sorted(o["id"] for o in page["orders"]) == sorted(ids)
    assert cluster.shipped() == dict.fromkeys(ids, 1)


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["cut at a line", "emptied", "a line twice"])
def test_a_damaged_snapshot_is_refused_naming_the_file(
    cluster: Cluster, tmp_path: Path, damage: str
) -> None:
    snapshot = tmp_path / "orders.jsonl"
    instance = cluster.start("--snapshot", str(snapshot))
    submit(instance, 5)
    assert instance.stop() == 0
    lines = snapshot.read_bytes().splitlines(keepends=True)
    damaged = {
        "cut at a line": b"".join(lines[:-2]),
        "emptied": b"",
        "a line twice": b"".join([*lines[:2], lines[1], *lines[2:]]),
    }[damage]
    snapshot.write_bytes(damaged)
    message = _start_fails(cluster, "--snapshot", str(snapshot))
    assert str(snapshot) in message
    assert "damaged" in message
    assert snapshot.read_bytes() == damaged  # left as it was, for the user to look at


@pytest.mark.e2e
@pytest.mark.postgres
def test_a_snapshot_with_a_shared_store_is_refused(
    cluster: Cluster, tmp_path: Path, database_url: str
) -> None:
    """Problem 5: --snapshot with PostgreSQL dumped the whole database at every stop and could
    not start again. Now it is refused at start."""
    message = _start_fails(
        cluster, "--snapshot", str(tmp_path / "s.jsonl"), "--database-url", database_url
    )
    assert "--snapshot" in message
    assert not (tmp_path / "s.jsonl").exists()


def _start_fails(cluster: Cluster, *args: str) -> str:
    """Start `serve` expecting a start-up failure: exit 2, one or two lines, no traceback."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "orderflow", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line and "WARNING" not in line]
    assert 1 <= len(lines) <= 2, done.stderr
    return done.stderr
