"""`orderflow bench`: load any running orderflow the way a user sizing a deployment would.

Submits N orders with C in flight, triggers processing, follows the orders until every one has
left processing, and reports throughput, latency percentiles and failures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

ORDER = {
    "customer": "Load Generator",
    "items": [{"name": "Monster Energy", "quantity": 2}, {"name": "Protein Bar", "quantity": 1}],
}
FINAL = {"shipped", "failed", "cancelled"}


@dataclass
class BenchResult:
    submitted: int = 0
    submit_errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    submit_s: float = 0.0
    until_done_s: float | None = None
    outcomes: Counter[str] = field(default_factory=Counter)

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def rows(self) -> list[tuple[str, str]]:
        done = "not reached" if self.until_done_s is None else f"{self.until_done_s:.2f} s"
        throughput = self.submitted / self.submit_s if self.submit_s else 0.0
        mean = statistics.fmean(self.latencies_s) * 1000 if self.latencies_s else 0.0
        return [
            ("orders submitted", f"{self.submitted:,}"),
            ("submit throughput", f"{throughput:,.0f} orders/s"),
            ("submit latency mean", f"{mean:.2f} ms"),
            *(
                (f"submit latency p{int(q * 100)}", f"{self.percentile_ms(q):.2f} ms")
                for q in (0.5, 0.9, 0.99)
            ),
            ("submit latency max", f"{max(self.latencies_s, default=0) * 1000:.2f} ms"),
            ("until the last order left processing", done),
            *((f"orders {status}", f"{n:,}") for status, n in sorted(self.outcomes.items())),
            ("failed requests", f"{sum(self.submit_errors.values()):,}"),
        ]


async def run_bench(
    client: aiohttp.ClientSession,
    orders: int,
    concurrency: int,
    *,
    timeout_s: float = 600.0,
    on_progress: Callable[[str, int], None] = lambda phase, n: None,
) -> BenchResult:
    """Submit `orders` orders with `concurrency` requests in flight, trigger, and follow them
    (at most `timeout_s` seconds after the trigger). `on_progress(phase, n)` reports progress."""
    result = BenchResult()
    ids: list[str] = []
    remaining = iter(range(orders))

    async def submitter() -> None:
        for _ in remaining:
            began = time.perf_counter()
            try:
                async with client.post("/orders", json=ORDER) as response:
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.submit_errors[type(exc).__name__] += 1
                continue
            result.latencies_s.append(time.perf_counter() - began)
            if response.status == 201:
                ids.append(body["id"])
                on_progress("submit", 1)
            else:
                result.submit_errors[f"HTTP {response.status}"] += 1

    began = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(max(1, concurrency))))
    result.submit_s = time.perf_counter() - began
    result.submitted = len(ids)

    triggered = time.perf_counter()
    async with client.post("/orders/process") as response:
        if response.status != 202:
            result.submit_errors[f"trigger HTTP {response.status}"] += 1
    waiting = set(ids)
    deadline = triggered + timeout_s
    while waiting and time.perf_counter() < deadline:
        finished = await _finished(client, waiting, concurrency)
        for order_id, status in finished.items():
            result.outcomes[status] += 1
            waiting.discard(order_id)
        on_progress("ship", len(finished))
        if waiting:
            await asyncio.sleep(0.2)
    if not waiting:
        result.until_done_s = time.perf_counter() - triggered
    result.outcomes["unfinished"] += len(waiting)
    if not result.outcomes["unfinished"]:
        del result.outcomes["unfinished"]
    return result


async def _finished(
    client: aiohttp.ClientSession, ids: set[str], concurrency: int
) -> dict[str, str]:
    """Status of each id in `ids` that is final now (asked with `concurrency` in flight)."""
    pending = iter(list(ids))
    found: dict[str, str] = {}

    async def asker() -> None:
        for order_id in pending:
            try:
                async with client.get(f"/orders/status/{order_id}") as response:
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                continue
            if response.status == 200:
                if body["status"] in FINAL:
                    found[order_id] = body["status"]
            elif response.status == 404:
                found[order_id] = "deleted"

    await asyncio.gather(*(asker() for _ in range(max(1, concurrency))))
    return found
