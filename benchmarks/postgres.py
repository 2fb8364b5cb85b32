"""PostgreSQL: orders claimed and shipped per second (delay 0) by one and by two real
`orderflow serve` processes on one database, with the cores busy meanwhile (what limits the
second instance), and a range query of 100 orders among 1M rows."""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx

from benchmarks.before import install
from benchmarks.fill import START
from benchmarks.pgserver import Cost, drop_database, measured, new_database
from benchmarks.report import Row
from benchmarks.servers import free_port, orderflow_command, served, tree_pids
from orderflow.domain import OrderQuery
from orderflow.store.postgres import PostgresOrderStore

SHIPPED = 100_000
ROWS = 1_000_000
BEFORE = "1b8d315"  # the PostgreSQL store before its cost was cut
ROUNDS = 2

# Pending orders made by the database itself, shaped exactly as orderflow writes them (but for
# their search key, which the version compared with has no column for, and no claim reads).
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


def fill(url: str, count: int, python: str) -> None:
    """`count` pending orders in `url`, its schema made by `python`'s orderflow."""
    subprocess.run(
        [python, "-m", "orderflow", "db", "migrate", "--database-url", url],
        check=True,
        capture_output=True,
    )
    asyncio.run(_insert(url, count))


async def _insert(url: str, count: int) -> None:
    db = await asyncpg.connect(url)
    await db.execute(_FILL, _START_MICROS, count)
    await db.execute("VACUUM ANALYZE orders")
    await db.close()


async def _shipped(url: str) -> int:
    db = await asyncpg.connect(url)
    try:
        return int(await db.fetchval("SELECT count(*) FROM orders WHERE status = 'shipped'"))
    finally:
        await db.close()


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


async def _drain(
    url: str, pids: Callable[[], list[int]], count: int, listener: _Reader | None, trigger: str
) -> Cost:
    """Trigger at `trigger`, wait until `count` orders shipped (by the counts numbering keeps:
    a count(*) of shipped orders every 0.1 s would cost the database more than a core), and
    for `listener` to read every event; what it cost."""
    async with measured(url, pids) as measure:
        async with httpx.AsyncClient() as client:
            assert (await client.post(trigger, timeout=60)).status_code == 202
        for _ in range(12_000):  # at most 10 minutes
            shipped = await measure.fetchval(
                "SELECT coalesce(sum(count), 0) FROM status_counts WHERE status = 'shipped'"
            )
            if shipped == count:
                break
            await asyncio.sleep(0.05)
        if listener is not None:  # until it read every event: two an order from here
            for _ in range(600):
                if listener.seen >= 2 * count:
                    break
                await asyncio.sleep(0.1)
            listener.done.set()
            assert listener.seen >= 2 * count, listener.seen
        measure.cost.jobs = count
    return measure.cost


def ship(python: str, instances: int = 1, reader: bool = False, count: int = SHIPPED) -> Cost:
    """What `instances` served by `python` (an interpreter with orderflow installed) cost to
    claim and ship `count` orders, with a live reader of every event on the first or none."""
    url = asyncio.run(new_database())
    try:
        fill(url, count, python)
        ports = [free_port() for _ in range(instances)]
        args = ("--database-url", url, "--ship-delay", "0", "--no-migrate")
        # Not pinned: the database needs the same two cores.
        with ExitStack() as stack:
            processes = [
                stack.enter_context(
                    served([python, *orderflow_command(p, *args)[1:]], p, "/healthz", core=None)
                )
                for p in ports
            ]
            urls = [u for u, _ in processes]
            listener = _Reader(urls[0]) if reader else None
            if listener is not None:
                listener.start()
            cost = asyncio.run(
                _drain(
                    url,
                    lambda: [pid for _, p in processes for pid in tree_pids(p.pid)],
                    count,
                    listener,
                    urls[0] + "/orders/process",
                )
            )
        assert asyncio.run(_shipped(url)) == count
        return cost
    finally:
        asyncio.run(drop_database(url))


async def _range_query() -> float:
    url = await new_database()
    try:
        await asyncio.to_thread(fill, url, ROWS, sys.executable)
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
        await drop_database(url)


def cost_rows(name: str, cost: Cost) -> list[Row]:
    """The rate of a drain, and what each order (or job) cost: CPU split between the client's
    processes and PostgreSQL's, commits, rows written, WAL."""
    return [
        Row("postgres", f"{name}: orders/s", cost.rate, "orders/s"),
        Row(
            "postgres",
            f"{name}: CPU per order, orderflow + PostgreSQL",
            cost.per_job_us(cost.client_cpu_s + cost.database_cpu_s),
            f"µs ({cost.split}; {(cost.client_cpu_s + cost.database_cpu_s) / cost.wall_s:.2f}"
            f" cores: {cost.database_cpu_s / cost.wall_s:.2f} PostgreSQL)",
        ),
        Row(
            "postgres",
            f"{name}: per order, commits / rows written / WAL",
            cost.commits / cost.jobs,
            f"commits / {cost.rows_written / cost.jobs:.2f} rows"
            f" / {cost.wal_bytes / cost.jobs:,.0f} bytes",
        ),
    ]


def run() -> list[Row]:
    with ExitStack() as stack:
        where = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            before: str | None = str(install(BEFORE, where))
        except Exception as exc:  # no history, no registry: today's alone
            print(f"postgres: cannot install {BEFORE}: {exc}", file=sys.stderr)
            before = None
        costs: dict[str, list[Cost]] = {"before": [], "today": []}
        for n in range(ROUNDS):
            for name in ("before", "today")[:: 1 if n % 2 else -1]:  # either first
                if name == "before" and before is None:
                    continue
                costs[name].append(ship(sys.executable if name == "today" else before))
    today = _median(costs["today"])
    rows = cost_rows("one instance, today", today)
    if costs["before"]:
        old = _median(costs["before"])
        rows += cost_rows(f"one instance, {BEFORE}", old)
        cpu = statistics.median(
            (t.client_cpu_s + t.database_cpu_s)
            / t.jobs
            / ((b.client_cpu_s + b.database_cpu_s) / b.jobs)
            for t, b in zip(costs["today"], costs["before"], strict=True)
        )
        rows.append(
            Row(
                "postgres",
                f"machine CPU per order: today / {BEFORE}",
                cpu,
                "x",
                "≤ 0.5",
                cpu <= 0.5,
            )
        )
    read = ship(sys.executable, reader=True)
    two = ship(sys.executable, instances=2)
    query_ms = asyncio.run(_range_query())
    rows += [
        Row("postgres", "the same with a live reader of every event", read.rate, "orders/s"),
        Row(
            "postgres",
            "throughput with a reader / without",
            read.rate / today.rate,
            "x",
            "≥ 0.85",
            read.rate / today.rate >= 0.85,
        ),
        *cost_rows("two instances", two),
        Row(
            "postgres",
            "two / one",
            two.rate / today.rate,
            "x",
            "≥ 1.6",
            two.rate / today.rate >= 1.6,
        ),
        Row("postgres", "range query of 100 among 1M rows", query_ms, "ms"),
    ]
    return rows


def _median(costs: list[Cost]) -> Cost:
    """The run of median rate."""
    return sorted(costs, key=lambda c: c.rate)[len(costs) // 2]
