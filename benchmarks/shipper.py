"""The HTTP shipper: orders shipped per second by one instance (memory store, uvloop, 256
shipments in flight) to a receiver that answers at once (the RSGI null app on granian, in
another process on the other core), and the CPU per order in this process; the CPU the
call-out adds is the difference with SimulatedShipper(0). Rounds alternate the two shippers,
and each figure is the median of the rounds (the machine is shared)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator

from benchmarks.fill import fill
from benchmarks.report import Row
from benchmarks.servers import LOAD_CORE, free_port, nullapp_command, server
from orderflow.claimer import Claimer
from orderflow.clock import SystemClock
from orderflow.domain import OrderStatus
from orderflow.processor import Processor, ProcessorSettings
from orderflow.service import OrderService
from orderflow.shippers.http import HttpShipper
from orderflow.shipping import Shipper, SimulatedShipper
from orderflow.store.memory import InMemoryOrderStore

COUNT = 20_000
CONCURRENCY = 256
ROUNDS = 3
TARGET = 5_000
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def _ship_all(shipper: Shipper) -> tuple[float, float]:
    """(cpu s, wall s) of this process to ship COUNT pending orders, trigger to last shipped."""
    store = InMemoryOrderStore()
    await fill(store, 0, COUNT)
    clock = SystemClock()
    settings = ProcessorSettings(concurrency=CONCURRENCY, timeout_s=30)
    processor = Processor(store, shipper, clock, settings)
    service = OrderService(store, Claimer(store, clock, processor.wake), processor, clock)
    await service.start()
    wall, cpu = time.perf_counter(), time.process_time()
    assert await service.trigger_processing() == COUNT
    for _ in range(60_000):  # bounded: 10 minutes
        if (await store.count_by_status()).get(OrderStatus.SHIPPED) == COUNT:
            break
        await asyncio.sleep(0.01)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await service.stop(grace_s=0)
    await shipper.close()
    shipped = (await store.count_by_status()).get(OrderStatus.SHIPPED)
    assert shipped == COUNT, f"{shipped} of {COUNT} shipped"
    return cpu, wall


@contextlib.contextmanager
def _on_load_core() -> Iterator[None]:
    """Run this process on the core the receiver is not on, when the platform allows it."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run() -> list[Row]:
    import uvloop  # what `orderflow serve` runs on

    port = free_port()
    rates, http_cpu, simulated_cpu = [], [], []
    with server(nullapp_command(port), port) as url, _on_load_core():
        for _ in range(ROUNDS):
            cpu, wall = uvloop.run(_ship_all(HttpShipper(f"{url}/hooks", SECRET, timeout_s=30)))
            rates.append(COUNT / wall)
            http_cpu.append(cpu / COUNT * 1e6)
            cpu, _ = uvloop.run(_ship_all(SimulatedShipper(0)))
            simulated_cpu.append(cpu / COUNT * 1e6)
    rate, per_order = statistics.median(rates), statistics.median(http_cpu)
    added = statistics.median(h - s for h, s in zip(http_cpu, simulated_cpu, strict=True))
    return [
        Row(
            "shipper",
            f"orders shipped/s over HTTP, {CONCURRENCY} in flight",
            rate,
            "/s",
            f"≥ {TARGET:,}",
            rate >= TARGET,
        ),
        Row("shipper", "CPU per order shipped over HTTP", per_order, "µs"),
        Row(
            "shipper", "CPU per order, SimulatedShipper(0)", statistics.median(simulated_cpu), "µs"
        ),
        Row("shipper", "CPU the HTTP call-out adds per order", added, "µs"),
    ]
