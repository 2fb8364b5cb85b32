"""GET /events through the real served app, read by a real client (httpx streaming, or a raw
socket where the test needs a reader that stops reading): resume after a drop with nothing
missed or repeated, in memory and across two PostgreSQL instances; a slow reader cut off; 410
past retention; filters; keep-alives; a clean end at shutdown."""

from __future__ import annotations

import json
import signal
import socket
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.conftest import eventually_sync
from tests.helpers import http_client, submit
from tests.servers import Server

pytestmark = pytest.mark.e2e

FAST = ("--auto-process", "--ship-delay", "0", "--concurrency", "16")
TIMERS = ("--heartbeat-interval", "0.3", "--lease-timeout", "2", "--poll-interval", "0.5")


class Message(msgspec.Struct, frozen=True):
    """One SSE message: its id line, event line and the event its data line holds."""

    id: int
    event: str
    data: dict[str, Any]


def messages(lines: Iterator[str]) -> Iterator[Message]:
    """The messages of an event stream, in order (comment lines skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "data" in fields:
            yield Message(int(fields["id"]), fields["event"], json.loads(fields["data"]))
            fields = {}
        else:
            fields = {}  # the retry: line


def opened(lines: Iterator[str]) -> None:
    """Read up to the stream's first message (`retry:`): from then on the stream is live."""
    assert next(lines) == "retry: 2000"
    assert next(lines) == ""


def the_log(server: Server) -> list[dict[str, Any]]:
    """Every event the store keeps, through the JSON pages of GET /events."""
    events: list[dict[str, Any]] = []
    after: int | None = None  # from the oldest kept
    with server.client() as client:
        while True:
            page = client.get(
                "/events",
                params={"limit": 1000} if after is None else {"after": after, "limit": 1000},
                headers={"Accept": "application/json"},
            ).json()
            events += page["events"]
            if page["next_cursor"] == after:
                return events
            after = page["next_cursor"]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def writer_and_reader(
    request: pytest.FixtureRequest, serve: type[Server], tmp_path: Path
) -> tuple[Server, Server]:
    """Where orders go and where the stream is read: one server in memory or on a SQLite file,
    or two instances sharing one PostgreSQL database, each shipping."""
    if request.param in ("memory", "sqlite"):
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'o.db'}"
        server = serve("--database-url", url, *FAST)
        return server, server
    url = request.getfixturevalue("database_url")
    return serve("--database-url", url, *FAST, *TIMERS), serve(
        "--database-url", url, *FAST, *TIMERS
    )


def test_a_reader_that_drops_halfway_and_resumes_sees_every_event_once_in_order(
    writer_and_reader: tuple[Server, Server],
) -> None:
    writer, reader = writer_and_reader
    orders = 1000
    seen: list[Message] = []
    with http_client(reader.url) as client, ThreadPoolExecutor(1) as pool:
        with client.stream("GET", "/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            lines = response.iter_lines()
            opened(lines)
            submitted = pool.submit(submit, writer, orders)
            for message in messages(lines):
                seen.append(message)
                if len(seen) == 3 * orders // 2:
                    break  # and drop the connection mid-stream, while orders keep coming
        assert not submitted.done() or len(submitted.result()) == orders
        shipped = sum(message.event == "order.shipped" for message in seen)
        resume = {"Last-Event-ID": str(seen[-1].id)}
        with client.stream("GET", "/events", headers=resume) as response:
            assert response.status_code == 200
            for message in messages(response.iter_lines()):
                seen.append(message)
                shipped += message.event == "order.shipped"
                if shipped == orders:
                    break
        ids = submitted.result()

    seqs = [message.id for message in seen]
    assert seqs == sorted(set(seqs)), "a seq came twice or out of order"
    assert [message.data for message in seen] == the_log(writer), "the stream is not the log"
    for message in seen:
        assert message.id == message.data["seq"]
        assert message.event == message.data["type"]
    history: dict[str, list[str]] = defaultdict(list)
    for message in seen:
        history[message.data["order_id"]].append(message.event)
    assert set(history) == set(ids)
    assert all(
        events == ["order.submitted", "order.processing", "order.shipped"]
        for events in history.values()
    ), history


def test_filters_pick_events_by_order_type_and_status(serve: type[Server]) -> None:
    server = serve(*FAST)
    with server.client() as client:
        with (
            client.stream("GET", "/events", params={"type": ["order.shipped"]}) as by_type,
            client.stream("GET", "/events", params={"status": "processing"}) as by_status,
        ):
            typed, statused = by_type.iter_lines(), by_status.iter_lines()
            opened(typed)
            opened(statused)
            first, second = submit(server, 2, threads=1)
            with client.stream("GET", "/events", params={"order_id": second, "after": 0}) as one:
                mine = messages(one.iter_lines())
                assert [next(mine).event for _ in range(3)] == [
                    "order.submitted",
                    "order.processing",
                    "order.shipped",
                ]
            shipped = messages(typed)
            assert {next(shipped).data["order_id"] for _ in range(2)} == {first, second}
            started = messages(statused)
            assert [next(started).event for _ in range(2)] == ["order.processing"] * 2
        bad = client.get("/events", params={"type": "order.teleported"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"
        assert "order.teleported" in bad.json()["detail"]


def test_a_quiet_stream_gets_keep_alive_comments(serve: type[Server]) -> None:
    server = serve("--sse-keep-alive", "0.2")
    with server.client() as client, client.stream("GET", "/events") as response:
        lines = response.iter_lines()
        opened(lines)
        assert next(lines) == ": keep-alive"
        assert next(lines) == ""
        assert next(lines) == ": keep-alive"  # and again, while nothing happens


def test_a_reader_that_stops_reading_is_cut_off_and_resumes_from_the_log(
    serve: type[Server],
) -> None:
    """The reader's socket takes little and it reads nothing while 3,000 events (~550 KB) go
    by. The server holds at most the stream's byte budget for it (64 KiB here): its stream
    ends cleanly after a whole message, the server goes on serving everyone else, and the
    reader, reading at last, gets what was sent and resumes from the log."""
    server = serve(*FAST, "--sse-stream-bytes", "65536")
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = b""
        while b"retry: 2000" not in head:
            head += slow.recv(1024)
        ids = submit(server, 1000, threads=4)
        slow.settimeout(30)
        received = head
        while chunk := slow.recv(1 << 16):
            received += chunk
            if received.endswith(b"\r\n0\r\n\r\n"):
                break  # the end of the chunked body: the server ended the stream
        else:
            pytest.fail("the connection was dropped rather than the stream ended")
    body = received.partition(b"\r\n\r\n")[2]
    got = body.count(b"\nevent: ")
    assert 0 < got < 3000, "the slow reader was not cut off"
    assert len(body) < 65536 + 256 * 1024  # the budget, and the last chunk that crossed it
    last = int(body.rpartition(b"id: ")[2].partition(b"\n")[0])
    with server.client() as client:
        page = client.get(
            "/events", params={"after": last, "limit": 10}, headers={"Accept": "application/json"}
        ).json()
        assert page["events"][0]["seq"] == last + 1
        assert client.get(f"/orders/{ids[-1]}").status_code == 200


def test_resuming_past_what_is_kept_is_gone(serve: type[Server]) -> None:
    """Pruning keeps the newest 10 events here (it runs every second with these settings)."""
    server = serve("--event-retention", "10", "--event-retention-count", "10")
    submit(server, 30, threads=1)
    eventually_sync(lambda: len(the_log(server)) == 10)
    oldest = the_log(server)[0]["seq"]
    with server.client() as client:
        for headers, params in (({"Last-Event-ID": "1"}, {}), ({}, {"after": "1"})):
            gone = client.get("/events", headers=headers, params=params)
            assert gone.status_code == 410
            assert gone.headers["content-type"] == "application/problem+json"
            assert gone.json()["status"] == 410
        with client.stream("GET", "/events", params={"after": oldest - 1}) as kept:
            assert kept.status_code == 200
            replayed = messages(kept.iter_lines())
            assert next(replayed).id == oldest


def test_streams_end_cleanly_at_shutdown(serve: type[Server]) -> None:
    server = serve()
    with server.client() as client, client.stream("GET", "/events") as response:
        lines = response.iter_lines()
        opened(lines)
        server.process.send_signal(signal.SIGTERM)
        assert list(lines) == []  # the body ends: no error, nothing more
    assert server.process.wait(timeout=30) == 0  # and the server stops cleanly
