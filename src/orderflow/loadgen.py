"""`orderflow bench`: load any running orderflow the way a user sizing a deployment would.

Submits N orders with C in flight, triggers processing, follows the orders until every one has
left processing, and reports throughput, latency percentiles and failures.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import click

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


class _Progress:
    """Progress on stderr: bars on a terminal, else a line every few seconds (a CI log)."""

    def __init__(self, total: int, every_s: float = 3.0) -> None:
        self._total = total
        self._every_s = every_s
        self._done = {"submit": 0, "ship": 0}
        self._last = time.monotonic()

    def __call__(self, phase: str, count: int) -> None:
        self._done[phase] += count
        now = time.monotonic()
        if now - self._last >= self._every_s or self._done[phase] == self._total:
            self._last = now
            verb = "submitted" if phase == "submit" else "finished"
            click.echo(f"{verb} {self._done[phase]:,} of {self._total:,}", err=True)


def main(url: str, orders: int, concurrency: int, timeout_s: float, token: str | None) -> None:
    """`orderflow bench`: run, print the results, exit 1 if any request failed."""
    if "://" not in url:
        url = "http://" + url
    headers = {"authorization": f"Bearer {token}"} if token else {}

    async def go() -> BenchResult:
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout_30s = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            url, connector=connector, timeout=timeout_30s, headers=headers
        ) as client:
            if sys.stderr.isatty():
                with (
                    click.progressbar(length=orders, label="submitting", file=sys.stderr) as sub,
                    click.progressbar(length=orders, label="shipping  ", file=sys.stderr) as ship,
                ):
                    bars = {"submit": sub, "ship": ship}
                    return await run_bench(
                        client, orders, concurrency, timeout_s=timeout_s,
                        on_progress=lambda phase, n: bars[phase].update(n),
                    )  # fmt: skip
            return await run_bench(
                client, orders, concurrency, timeout_s=timeout_s, on_progress=_Progress(orders)
            )

    try:
        result = asyncio.run(go())
    except (aiohttp.ClientError, ValueError) as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    width = max(len(name) for name, _ in result.rows())
    for name, value in result.rows():
        click.echo(f"{name:<{width}}  {value}")
    if result.submit_errors or result.until_done_s is None:
        raise SystemExit(1)
