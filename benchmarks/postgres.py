"""PostgreSQL: orders claimed and shipped per second (delay 0) by one and by two real
`orderflow serve` processes on one database, with the cores busy meanwhile (what limits the
second instance), and a range query of 100 orders among 1M rows."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import statistics
import threading
import time
from datetime import timedelta
from pathlib import Path

import asyncpg

from benchmarks.fill import START
from benchmarks.report import Row
from benchmarks.servers import free_port, orderflow_command, server
from orderflow.domain import OrderQuery
from orderflow.store.postgres import PostgresOrderStore

DATABASE_URL = os.environ.get(
    "ORDERFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SHIPPED = 100_000
ROWS = 1_000_000

# Pending orders made by the database itself, shaped exactly as orderflow writes them.
_FILL = """
INSERT INTO orders (id, customer, items, created_at, status, updated_at, history)
SELECT 'order_' || lpad(to_hex($1::bigint + n), 14, '0') || lpad(to_hex(n), 16, '0'),
       'customer ' || n,
       '[{"name":"Monster Energy","quantity":2},{"name":"Protein Bar","quantity":1}]',
       t, 'pending', t,
       jsonb_build_array(jsonb_build_object('status', 'pending',
           'at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
FROM generate_series(0, $2 - 1) AS n,
     LATERAL (SELECT to_timestamp(($1::bigint + n) / 1e6) AS t) AS times
"""
_START_MICROS = int((START - START.replace(year=1970, month=1, day=1)).total_seconds()) * 10**6


async def _database() -> str:
    admin = await asyncpg.connect(DATABASE_URL)
    name = f"orderflow_bench_{secrets.token_hex(4)}"
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return DATABASE_URL.rsplit("/", 1)[0] + "/" + name


async def _drop(url: str) -> None:
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    await admin.close()


async def _fill(url: str, count: int) -> None:
    store = await PostgresOrderStore.connect(url)
    await store.close()
    db = await asyncpg.connect(url)
    await db.execute(_FILL, _START_MICROS, count)
    await db.execute("ANALYZE orders")
    await db.close()


async def _shipped(url: str) -> int:
    db = await asyncpg.connect(url)
    try:
        return int(await db.fetchval("SELECT count(*) FROM orders WHERE status = 'shipped'"))
    finally:
        await db.close()


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of PostgreSQL's processes) since boot. A backend
    that exits takes its seconds with it, so PostgreSQL's share is a lower bound."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    database = 0
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = path.read_text()
        except OSError:  # gone meanwhile
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if name == "postgres":
            fields = rest.split()
            database += int(fields[11]) + int(fields[12])  # utime, stime
    return busy / tick, database / tick


class _Reader(threading.Thread):
    """A live reader of every event (GET /events on a raw socket), resuming after its last id
    whenever a stream ends: what a subscriber adds to claim-and-ship."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.address = url.removeprefix("http://").split(":")
        self.last = 0
        self.seen = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            host, port = self.address
            with socket.create_connection((host, int(port))) as sock:
                sock.settimeout(0.5)
                sock.sendall(
                    b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Last-Event-ID: %d\r\n\r\n" % self.last
                )
                buffer = b""
                while not self.done.is_set():
                    try:
                        data = sock.recv(1 << 16)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    data = buffer + data
                    cut = data.rfind(b"\n\n") + 2  # whole messages up to here
                    whole, buffer = data[:cut], data[cut:]
                    self.seen += whole.count(b"\nevent: ")  # counted in C: a cheap reader
                    at = whole.rfind(b"id: ")
                    if at >= 0:
                        self.last = int(whole[at + 4 :].partition(b"\n")[0])
                    if data.endswith(b"\r\n0\r\n\r\n"):  # the stream ended: resume
                        break


def _ship_rate(instances: int, reader: bool = False) -> tuple[float, float, float]:
    """(orders/s, cores busy, cores PostgreSQL used) while `instances` ship SHIPPED orders,
    with a live reader of every event on the first instance or none."""
    url = asyncio.run(_database())
    try:
        asyncio.run(_fill(url, SHIPPED))
        ports = [free_port() for _ in range(instances)]
        args = ("--database-url", url, "--ship-delay", "0", "--no-migrate")
        # Not pinned: the database needs the same two cores.
        contexts = [
            server(orderflow_command(p, *args), p, ready_path="/healthz", core=None) for p in ports
        ]
        urls = [c.__enter__() for c in contexts]
        try:
            import httpx

            listener = _Reader(urls[0]) if reader else None
            if listener is not None:
                listener.start()
            began, (busy, database) = time.perf_counter(), _cpu_seconds()
            assert httpx.post(urls[0] + "/orders/process", timeout=60).status_code == 202
            for _ in range(6000):  # at most 10 minutes
                if asyncio.run(_shipped(url)) == SHIPPED:
                    break
                time.sleep(0.1)
            if listener is not None:  # until it read every event: two an order from here
                for _ in range(600):
                    if listener.seen >= 2 * SHIPPED:
                        break
                    time.sleep(0.1)
                listener.done.set()
                assert listener.seen >= 2 * SHIPPED, listener.seen
            elapsed = time.perf_counter() - began
            busy_after, database_after = _cpu_seconds()
        finally:
            for context in contexts:
                context.__exit__(None, None, None)
        assert asyncio.run(_shipped(url)) == SHIPPED
        return (
            SHIPPED / elapsed,
            (busy_after - busy) / elapsed,
            (database_after - database) / elapsed,
        )
    finally:
        asyncio.run(_drop(url))


async def _range_query() -> float:
    url = await _database()
    try:
        await _fill(url, ROWS)
        store = await PostgresOrderStore.connect(url)
        middle = START + timedelta(microseconds=ROWS // 2)
        query = OrderQuery(start=middle, end=middle + timedelta(microseconds=100), limit=100)
        samples = []
        for _ in range(300):
            began = time.perf_counter()
            page = await store.list_orders(query)
            samples.append(time.perf_counter() - began)
        assert len(page.orders) == 100
        await store.close()
        return statistics.median(samples) * 1000
    finally:
        await _drop(url)


def _busy(name: str, busy: float, database: float) -> Row:
    unit = f"of {os.cpu_count()} (PostgreSQL at least {database:.2f})"
    return Row("postgres", f"cores busy meanwhile, {name}", busy, unit)


def run() -> list[Row]:
    one, one_busy, one_database = _ship_rate(1)
    read, _, _ = _ship_rate(1, reader=True)
    two, two_busy, two_database = _ship_rate(2)
    query_ms = asyncio.run(_range_query())
    return [
        Row(
            "postgres", "claimed and shipped, one instance", one, "orders/s", "≥ 5,000", one >= 5000
        ),
        _busy("one instance", one_busy, one_database),
        Row("postgres", "the same with a live reader of every event", read, "orders/s"),
        Row(
            "postgres",
            "throughput with a reader / without",
            read / one,
            "x",
            "≥ 0.85",
            read / one >= 0.85,
        ),
        Row("postgres", "claimed and shipped, two instances", two, "orders/s"),
        _busy("two instances", two_busy, two_database),
        Row("postgres", "two / one", two / one, "x", "≥ 1.6", two / one >= 1.6),
        Row("postgres", "range query of 100 among 1M rows", query_ms, "ms"),
    ]
