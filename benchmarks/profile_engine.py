"""Where the engine's time goes: `python -m benchmarks.profile_engine [COUNT]` ships COUNT
pending orders in memory at delay 0, in this process, as `orderflow serve` runs them (uvloop,
the collector settled after the fill, the runtime's own wiring), and prints the functions that
took the most time under cProfile, and the CPU per order without the profiler. Not a part of
`make bench` (that measures the served engine: benchmarks/engine.py); a tool for finding what
to cut."""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time

from benchmarks.fill import fill
from orderflow.domain import OrderStatus
from orderflow.runtime import Runtime
from orderflow.server import run, settle_gc
from orderflow.settings import Settings
from orderflow.store.memory import InMemoryOrderStore


async def ship(count: int, profile: cProfile.Profile | None) -> float:
    """CPU seconds from the trigger to the last of `count` orders shipped."""
    store = InMemoryOrderStore()
    await fill(store, 0, count)
    runtime = Runtime(Settings(ship_delay=0.0, shutdown_grace=0.0), store=store)
    await runtime.start()
    settle_gc()
    cpu = time.process_time()
    if profile is not None:
        profile.enable()
    await runtime.service.trigger_processing()
    for _ in range(1_000_000):  # bounded: 5,000 s
        if (await store.count_by_status())[OrderStatus.SHIPPED] == count:
            break
        await asyncio.sleep(0.005)
    if profile is not None:
        profile.disable()
    cpu = time.process_time() - cpu
    await runtime.stop()
    return cpu


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    results: list[float] = []
    run(_collect(ship(count, None), results))
    print(f"CPU per order, no profiler: {results[0] / count * 1e6:.2f} µs")
    profile = cProfile.Profile()
    run(_collect(ship(count, profile), results))
    stats = pstats.Stats(profile).strip_dirs().sort_stats("tottime")
    stats.print_stats(35)


async def _collect(coroutine: object, results: list[float]) -> None:
    results.append(await coroutine)  # type: ignore[misc]


if __name__ == "__main__":
    main()
