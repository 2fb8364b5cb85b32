"""Processing engine, served as users run it: `orderflow serve --ship-delay 0` (its other
defaults: in memory, on uvloop, the collector settled) on one core, orders submitted over HTTP,
then one trigger; the CPU of the server's whole process tree from the trigger to the last order
shipped, per order. Beside it, side by side in the same run and alternating which goes first,
commit 80a1136 (before fencing tokens, holds, the event log and metrics) served the same way
(its granian worker is a child process: counted). Also the wall time of 100k orders at 50 ms
with concurrency 1,000, against the ideal (100 rounds of 50 ms)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import httpx

from benchmarks.before import BEFORE, install
from benchmarks.http import ORDER
from benchmarks.report import Row
from benchmarks.servers import (
    free_port,
    orderflow_command,
    process_cpu_s,
    served,
    server,
    tree_pids,
)

COUNT = 50_000
ROUNDS = 5
TARGET = 0.7  # today's CPU per order over 80a1136's, at most
WIDE_COUNT, WIDE_DELAY_S, WIDE_CONCURRENCY = 100_000, 0.05, 1000


def tree_cpu_s(pid: int) -> float:
    """User and system CPU seconds of process `pid` and every process below it, now."""
    return sum(process_cpu_s(each) or 0.0 for each in tree_pids(pid))


async def submit(base: str, count: int, concurrency: int = 64) -> None:
    """POST `count` orders, `concurrency` at a time."""
    body, headers = ORDER.encode(), {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(base + "/orders", data=body, headers=headers) as answer:
                    if answer.status != 201:
                        raise RuntimeError(f"POST /orders answered {answer.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def finished(base: str, stats: bool) -> None:
    """Until no order is pending or processing: by the stats where the service has them, else
    by paging through both statuses (the bounded walks of processing come with cursors)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100_000):  # bounded: 1,000 s at least
            if stats:  # a cheap look: often, so that the wall time is the engine's
                async with session.get(base + "/orders/stats") as answer:
                    counts = (await answer.json())["by_status"]
                if counts["pending"] == counts["processing"] == 0:
                    return
                await asyncio.sleep(0.01)
            elif not await _any_unfinished(session, base):
                return
            else:
                await asyncio.sleep(0.1)
    raise RuntimeError("orders still unfinished")


async def _any_unfinished(session: aiohttp.ClientSession, base: str) -> bool:
    for status in ("pending", "processing"):
        cursor: str | None = None
        while True:
            query = f"/orders?status={status}&limit=1" + (f"&cursor={cursor}" if cursor else "")
            async with session.get(base + query) as answer:
                page = await answer.json()
            if page["orders"]:
                return True
            cursor = page.get("next_cursor")
            if cursor is None:
                break
    return False


def cpu_per_order_us(command: list[str], port: int, stats: bool) -> float:
    """Serve `command` on `port`, submit COUNT orders, trigger; the server's CPU per order
    from the trigger to the last one shipped, in µs."""
    with served(command, port, ready_path="/healthz") as (base, process):
        asyncio.run(submit(base, COUNT))
        pid = process.pid
        time.sleep(0.5)  # what the submits left behind settles
        before = tree_cpu_s(pid)
        httpx.post(base + "/orders/process", timeout=60).raise_for_status()
        asyncio.run(finished(base, stats))
        return (tree_cpu_s(pid) - before) / COUNT * 1e6


def wide_wall_s() -> float:
    """Wall time from the trigger to the last of WIDE_COUNT orders shipped at WIDE_DELAY_S,
    with WIDE_CONCURRENCY shipments at once, served."""
    port = free_port()
    command = orderflow_command(
        port, "--ship-delay", str(WIDE_DELAY_S), "--concurrency", str(WIDE_CONCURRENCY)
    )
    with server(command, port, ready_path="/healthz") as base:
        asyncio.run(submit(base, WIDE_COUNT))
        time.sleep(0.5)
        began = time.perf_counter()
        httpx.post(base + "/orders/process", timeout=60).raise_for_status()
        asyncio.run(finished(base, stats=True))
        return time.perf_counter() - began


def run() -> list[Row]:
    results: dict[str, list[float]] = {"before": [], "today": []}
    with ExitStack() as stack:
        where = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            python: Path | None = install(BEFORE, where)
        except Exception as exc:  # no history, no registry: today's alone
            print(f"engine: cannot install {BEFORE}: {exc}", file=sys.stderr)
            python = None
        for n in range(ROUNDS):
            for name in ("before", "today")[:: 1 if n % 2 else -1]:  # either first
                if name == "before" and python is None:
                    continue
                port = free_port()
                if name == "before":
                    assert python is not None
                    command = [str(python), "-m", "orderflow", "serve", "--port", str(port),
                               "--ship-delay", "0"]  # fmt: skip
                else:
                    command = orderflow_command(port, "--ship-delay", "0")
                results[name].append(cpu_per_order_us(command, port, stats=name == "today"))
    today = statistics.median(results["today"])
    rows = [Row("engine", "CPU per order shipped (delay 0), served, today", today, "µs")]
    if results["before"]:
        before = statistics.median(results["before"])
        ratio = statistics.median(
            t / b for t, b in zip(results["today"], results["before"], strict=True)
        )
        rows += [
            Row("engine", f"CPU per order shipped (delay 0), served, {BEFORE}", before, "µs"),
            Row("engine", f"CPU per order: today / {BEFORE}", ratio, "x", f"≤ {TARGET}",
                ratio <= TARGET),
        ]  # fmt: skip
    wall = wide_wall_s()
    ideal = WIDE_COUNT * WIDE_DELAY_S / WIDE_CONCURRENCY
    rows += [
        Row("engine", "100k at 50 ms, concurrency 1,000, served: wall time", wall, "s"),
        Row("engine", "ideal / wall", ideal / wall, "x", "≥ 0.9", ideal / wall >= 0.9),
    ]
    return rows
