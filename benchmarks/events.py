"""Events: what the event log costs claim-and-ship (in memory, with a live reader against none),
and Server-Sent Events fan-out from a real `orderflow serve`: 100 clients while orders ship at
about 1,000 events a second, with the delay from a change to each client (p99)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

from benchmarks.fill import fill
from benchmarks.report import Row
from benchmarks.servers import LOAD_CORE, free_port, orderflow_command, pinned, server
from orderflow.domain import OrderStatus
from orderflow.events import EventFilter
from orderflow.runtime import Runtime
from orderflow.settings import Settings
from orderflow.shipping import SimulatedShipper
from orderflow.store.memory import InMemoryOrderStore

COUNT = 50_000
CLIENTS = 100
TIMED = 10  # of the clients, those that parse every event to time it (the rest only read)
ORDERS_PER_S = 333  # three events each (submitted, processing, shipped): ~1,000 events/s
SECONDS = 10


async def _ship(readers: int) -> float:
    """CPU seconds to claim and ship COUNT orders (delay 0) with `readers` live readers."""
    store = InMemoryOrderStore()
    await fill(store, 0, COUNT)
    runtime = Runtime(Settings(shutdown_grace=0), store=store, shipper=SimulatedShipper(0))
    await runtime.start()
    seen = [0] * readers

    async def read(n: int) -> None:
        async for chunk in runtime.events.stream(None, EventFilter()):
            seen[n] += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")

    tasks = [asyncio.create_task(read(n)) for n in range(readers)]
    await asyncio.sleep(0.1)
    cpu = time.process_time()
    assert await runtime.service.trigger_processing() == COUNT
    for _ in range(100_000):
        if (await store.count_by_status())[OrderStatus.SHIPPED] == COUNT:
            break
        await asyncio.sleep(0.01)
    for _ in range(1000):  # until the readers saw every event
        if all(n >= 2 * COUNT for n in seen):
            break
        await asyncio.sleep(0.01)
    cpu = time.process_time() - cpu
    await runtime.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cpu


_CLIENT = r"""
import asyncio, json, sys, time
from datetime import datetime, UTC
url, clients, timed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate, seconds = float(sys.argv[4]), float(sys.argv[5])
host, port = url.split("//")[1].split(":")
delays, counts = [], [0] * clients
async def reader(n):
    r, w = await asyncio.open_connection(host, int(port))
    w.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    await w.drain()
    buffer = b""
    while True:
        data = await r.read(65536)
        if not data:
            return
        counts[n] += data.count(b"\ndata: ")
        if n < timed:
            now = datetime.now(UTC)
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    at = datetime.fromisoformat(json.loads(line[6:])["at"].replace("Z", "+00:00"))
                    delays.append((now - at).total_seconds())
async def submit():
    r, w = await asyncio.open_connection(host, int(port))
    body = b'{"customer":"Load","items":[{"name":"W","quantity":1}]}'
    request = (b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            w.write(request)
            sent += 1
        await w.drain()
        while True:  # drain the answers as they come
            try:
                await asyncio.wait_for(r.read(65536), 0.001)
            except asyncio.TimeoutError:
                break
        await asyncio.sleep(0.005)
    return sent
async def main():
    tasks = [asyncio.create_task(reader(n)) for n in range(clients)]
    await asyncio.sleep(1)
    sent = await submit()
    await asyncio.sleep(1)
    for t in tasks: t.cancel()
    print(json.dumps({"sent": sent, "delays": delays, "counts": counts}))
asyncio.run(main())
"""


def _fan_out() -> tuple[float, float, float, int]:
    """(p50 ms, p99 ms, events/s per client, clients that saw every event)."""
    port = free_port()
    command = orderflow_command(port, "--auto-process", "--ship-delay", "0")
    with server(command, port, ready_path="/healthz") as url:
        client = [sys.executable, "-c", _CLIENT, url, str(CLIENTS), str(TIMED)]
        client += [str(ORDERS_PER_S), str(SECONDS)]
        done = subprocess.run(
            pinned(LOAD_CORE, client), capture_output=True, text=True, check=True, timeout=120
        )
    result = json.loads(done.stdout)
    delays = sorted(result["delays"])
    counts = result["counts"]
    every = max(counts)
    p50 = statistics.median(delays) * 1000
    p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))] * 1000
    return p50, p99, statistics.median(counts) / SECONDS, sum(c == every for c in counts)


def run() -> list[Row]:
    alone = asyncio.run(_ship(0))
    watched = asyncio.run(_ship(1))
    ratio = alone / watched
    p50, p99, rate, complete = _fan_out()
    return [
        Row("events", "claim and ship, in memory: CPU per order, nobody reading",
            alone / COUNT * 1e6, "µs"),
        Row("events", "the same with a live reader of every event", watched / COUNT * 1e6, "µs"),
        Row("events", "throughput with a reader / without", ratio, "x", "≥ 0.85", ratio >= 0.85),
        Row("events", f"SSE: events/s to each of {CLIENTS} clients", rate, "events/s"),
        Row("events", f"SSE: clients that saw every event (of {CLIENTS})", complete, ""),
        Row("events", "SSE: change to client, p50", p50, "ms"),
        Row("events", "SSE: change to client, p99", p99, "ms", "< 50", p99 < 50),
    ]  # fmt: skip
