"""Memory: resident bytes per stored order at 1M orders, measured in a fresh process."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys

from benchmarks.report import Row

COUNT = 1_000_000


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def _child() -> None:
    from benchmarks.fill import fill
    from orderflow.store.memory import InMemoryOrderStore

    store = InMemoryOrderStore()
    gc.collect()
    before = _rss()
    await fill(store, 0, COUNT)
    gc.collect()
    print((_rss() - before) / COUNT)


def run() -> list[Row]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory"], capture_output=True, text=True, check=True
    )
    per_order = float(out.stdout.strip())
    return [
        Row(
            "memory",
            "resident memory per order at 1M",
            per_order,
            "bytes",
            "≤ 500",
            per_order <= 500,
        )
    ]


if __name__ == "__main__":
    asyncio.run(_child())
