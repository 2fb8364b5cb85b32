"""Scaling of queries: a range query returning 100 orders, as the API asks for it (the page as
JSON), with 10k, 100k and 1M stored."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import timedelta

from benchmarks.fill import START, fill
from benchmarks.report import Row
from orderflow.domain import OrderQuery
from orderflow.store.memory import InMemoryOrderStore

SIZES = (10_000, 100_000, 1_000_000)
REPEATS = 2000


async def _measure() -> dict[int, float]:
    store = InMemoryOrderStore()
    timings: dict[int, float] = {}
    filled = 0
    for size in SIZES:
        await fill(store, filled, size)
        filled = size
        middle = size // 2
        query = OrderQuery(
            start=START + timedelta(microseconds=middle),
            end=START + timedelta(microseconds=middle + 100),
            limit=100,
        )
        samples = []
        for _ in range(5):
            begin = time.perf_counter()
            for _ in range(REPEATS):
                page = await store.list_orders_json(query)
            samples.append((time.perf_counter() - begin) / REPEATS)
            assert page.count == 100
        timings[size] = statistics.median(samples) * 1e6
    return timings


def run() -> list[Row]:
    timings = asyncio.run(_measure())
    rows = [
        Row("queries", f"range query of 100 with {n:,} stored", t, "µs") for n, t in timings.items()
    ]
    ratio = timings[SIZES[-1]] / timings[SIZES[0]]
    rows.append(Row("queries", "1M / 10k", ratio, "x", "≤ 1.5", ratio <= 1.5))
    return rows
