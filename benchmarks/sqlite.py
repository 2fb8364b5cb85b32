"""SQLite (synchronous=FULL, the default) beside the in-memory store, in one run: POST /orders
served (the `http` part's machinery: one core, wrk on the other, rounds side by side); orders
claimed and shipped at delay 0 by a real `orderflow serve` (memory, SQLite, and one PostgreSQL
instance), with the WAL's size at its peak meanwhile; a range query of 100 among 1M orders and
among 10k; bytes on disk per order at 1M; and the time a restart takes to be ready at 1M."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from datetime import timedelta
from pathlib import Path

import httpx

from benchmarks.fill import START, fill, order
from benchmarks.http import POST_LUA, ROUNDS, ensure_wrk, wrk
from benchmarks.report import Row
from benchmarks.servers import free_port, orderflow_command, server
from orderflow.domain import OrderQuery
from orderflow.snapshot import SnapshotFile
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.sqlite import SqliteOrderStore

SHIPPED = 100_000
ROWS = 1_000_000
SMALL = 10_000


def _post_rates(tmp: Path) -> tuple[float, float, list[float]]:
    """POST /orders requests/s in memory and on SQLite, and the per-round ratios."""
    post = tmp / "post.lua"
    post.write_text(POST_LUA)
    with ExitStack() as stack:
        urls = {}
        for name, url in (("memory", "memory://"), ("sqlite", f"sqlite:///{tmp / 'post.db'}")):
            port = free_port()
            command = orderflow_command(port, "--database-url", url)
            urls[name] = stack.enter_context(server(command, port, ready_path="/healthz"))
        rates: dict[str, list[float]] = {"memory": [], "sqlite": []}
        for _ in range(ROUNDS):
            for name, base in urls.items():
                rates[name].append(wrk(base + "/orders", post)[0])
    ratios = [s / m for s, m in zip(rates["sqlite"], rates["memory"], strict=True)]
    return statistics.median(rates["memory"]), statistics.median(rates["sqlite"]), ratios


class _WalPeak(threading.Thread):
    """The largest the -wal file beside `path` was, sampled every 10 ms until `done`."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.wal = Path(str(path) + "-wal")
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            with suppress(FileNotFoundError):
                self.peak = max(self.peak, self.wal.stat().st_size)


def _shipped(base: str) -> int:
    text = httpx.get(base + "/metrics", timeout=30).text
    found = re.search(r'^orderflow_orders\{status="shipped"\} (\S+)$', text, re.M)
    return 0 if found is None else int(float(found.group(1)))


def _ship_rate(url: str, *flags: str) -> float:
    """Orders/s claimed and shipped by one `orderflow serve` on `url`, SHIPPED pending at
    the trigger, delay 0; not pinned (a store's thread may use the other core)."""
    port = free_port()
    command = orderflow_command(port, "--database-url", url, "--ship-delay", "0", *flags)
    with server(command, port, ready_path="/healthz", core=None) as base:
        began = time.perf_counter()
        assert httpx.post(base + "/orders/process", timeout=120).status_code == 202
        for _ in range(12_000):  # at most 10 minutes
            if _shipped(base) == SHIPPED:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        assert _shipped(base) == SHIPPED
    return SHIPPED / elapsed


def _memory_snapshot(path: Path) -> None:
    store = InMemoryOrderStore(event_retention=1_000_000)
    asyncio.run(fill(store, 0, SHIPPED))
    SnapshotFile(path).save(store.dump())


async def _sqlite_fill(url: str, count: int, start: int = 0) -> None:
    store = await SqliteOrderStore.open(url)
    try:
        for first in range(start, count, 1000):
            batch = [order(n) for n in range(first, min(count, first + 1000))]
            await asyncio.gather(*(store.add(o) for o in batch))
    finally:
        await store.close()


async def _range_query(url: str) -> float:
    """µs for a range query of 100 in the middle of the file `url` names, as the API asks."""
    store = await SqliteOrderStore.open(url)
    try:
        count = sum((await store.count_by_status()).values())
        middle = START + timedelta(microseconds=count // 2)
        query = OrderQuery(start=middle, end=middle + timedelta(microseconds=100), limit=100)
        samples = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(500):
                page = await store.list_orders_json(query)
            samples.append((time.perf_counter() - began) / 500)
        assert page.count == 100
        return statistics.median(samples) * 1e6
    finally:
        await store.close()


def _ready_after_restart(url: str) -> float:
    """Seconds from starting `orderflow serve` on `url` to its first 200 on /readyz."""
    port = free_port()
    began = time.perf_counter()
    with server(orderflow_command(port, "--database-url", url), port, ready_path="/readyz"):
        for _ in range(6000):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.01)
        return time.perf_counter() - began


def run() -> list[Row]:
    from benchmarks.postgres import ship as postgres_ship

    ensure_wrk()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        memory, sqlite, ratios = _post_rates(tmp)
        ratio = statistics.median(ratios)
        rows += [
            Row("sqlite", "POST /orders requests/s, in memory", memory, "req/s"),
            Row("sqlite", "POST /orders requests/s, SQLite (synchronous=FULL)", sqlite, "req/s"),
            Row("sqlite", "POST /orders: SQLite / memory", ratio, "x", "≥ 0.70", ratio >= 0.7),
        ]
        snapshot = tmp / "orders.jsonl"
        _memory_snapshot(snapshot)
        in_memory = _ship_rate("memory://", "--snapshot", str(snapshot))
        ship_url = f"sqlite:///{tmp / 'ship.db'}"
        asyncio.run(_sqlite_fill(ship_url, SHIPPED))
        peak = _WalPeak(tmp / "ship.db")
        peak.start()
        on_sqlite = _ship_rate(ship_url)
        peak.done.set()
        peak.join()
        postgres = postgres_ship(sys.executable).rate
        shipped = on_sqlite / in_memory
        rows += [
            Row("sqlite", "claimed and shipped, in memory", in_memory, "orders/s"),
            Row("sqlite", "claimed and shipped, SQLite (FULL)", on_sqlite, "orders/s"),
            Row("sqlite", "claimed and shipped, one PostgreSQL instance", postgres, "orders/s"),
            Row(
                "sqlite",
                "claimed and shipped: SQLite / memory",
                shipped,
                "x",
                "≥ 0.50",
                shipped >= 0.5,
            ),
            Row("sqlite", "WAL at its peak, meanwhile", peak.peak / 2**20, "MiB"),
        ]
        small_url, big_url = f"sqlite:///{tmp / 'small.db'}", f"sqlite:///{tmp / 'big.db'}"
        asyncio.run(_sqlite_fill(small_url, SMALL))
        asyncio.run(_sqlite_fill(big_url, ROWS))
        small, big = asyncio.run(_range_query(small_url)), asyncio.run(_range_query(big_url))
        size = sum(p.stat().st_size for p in tmp.iterdir() if p.name.startswith("big.db"))
        ready_s = _ready_after_restart(big_url)
        rows += [
            Row("sqlite", "range query of 100 among 10k", small, "µs"),
            Row("sqlite", "range query of 100 among 1M", big, "µs"),
            Row("sqlite", "range query 1M / 10k", big / small, "x", "≤ 1.5", big / small <= 1.5),
            Row("sqlite", "bytes on disk per order at 1M (pending)", size / ROWS, "bytes"),
            Row("sqlite", "restart ready at 1M (checks the file first)", ready_s, "s"),
        ]
        os.sync()
    return rows
