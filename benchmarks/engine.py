"""Processing engine, no HTTP: CPU per order at delay 0, and wall time against the ideal at
delay 50 ms with concurrency 1,000."""

from __future__ import annotations

import asyncio
import time

from benchmarks.fill import fill
from benchmarks.report import Row
from orderflow.claimer import Claimer
from orderflow.clock import SystemClock
from orderflow.domain import OrderStatus
from orderflow.processor import Processor, ProcessorSettings
from orderflow.service import OrderService
from orderflow.shipping import SimulatedShipper
from orderflow.store.memory import InMemoryOrderStore

COUNT = 100_000


async def _ship_all(delay_s: float, concurrency: int) -> tuple[float, float]:
    """(cpu seconds, wall seconds) to ship COUNT pending orders, trigger to last shipped."""
    store = InMemoryOrderStore()
    await fill(store, 0, COUNT)
    clock = SystemClock()
    settings = ProcessorSettings(concurrency=concurrency)
    processor = Processor(store, SimulatedShipper(delay_s), clock, settings)
    service = OrderService(store, Claimer(store, clock, processor.wake), processor, clock)
    await service.start()
    wall, cpu = time.perf_counter(), time.process_time()
    assert await service.trigger_processing() == COUNT
    for _ in range(100_000):  # bounded: 0.01 s a round
        if (await store.count_by_status()).get(OrderStatus.SHIPPED) == COUNT:
            break
        await asyncio.sleep(0.01)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await service.stop(grace_s=0)
    assert (await store.count_by_status()).get(OrderStatus.SHIPPED) == COUNT
    return cpu, wall


def run() -> list[Row]:
    cpu, _ = asyncio.run(_ship_all(0.0, 64))
    per_order = cpu / COUNT * 1e6
    delay_s, concurrency = 0.05, 1000
    _, wall = asyncio.run(_ship_all(delay_s, concurrency))
    ideal = COUNT * delay_s / concurrency
    return [
        Row("engine", "CPU per order shipped (delay 0)", per_order, "µs", "≤ 15", per_order <= 15),
        Row("engine", "100k at 50 ms, concurrency 1,000: wall time", wall, "s"),
        Row("engine", "ideal / wall", ideal / wall, "x", "≥ 0.9", ideal / wall >= 0.9),
    ]
