"""Triggers at scale: POST /orders/process with 1M pending orders, through the app (ASGI), while a
probe on the same event loop sends GET /healthz every millisecond and records its latency. Run
as `orderflow serve` runs: on uvloop, the collector settled once the orders are in."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.fill import fill
from benchmarks.report import Row
from orderflow.runtime import Runtime
from orderflow.server import build_app, settle_gc
from orderflow.server import run as run_on_uvloop
from orderflow.settings import Settings
from orderflow.shipping import SimulatedShipper
from orderflow.store.memory import InMemoryOrderStore

COUNT = 1_000_000


async def _call(app: Any, method: str, path: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


async def _measure() -> tuple[float, float, int]:
    store = InMemoryOrderStore()
    await fill(store, 0, COUNT)
    runtime = Runtime(Settings(shutdown_grace=0), store=store, shipper=SimulatedShipper(1.0))
    app = build_app(runtime)
    await runtime.start()
    settle_gc()
    worst = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        while not done.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.001)
            status, _ = await _call(app, "GET", "/healthz")
            assert status == 200
            worst = max(worst, time.perf_counter() - began - 0.001)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    status, body = await _call(app, "POST", "/orders/process")
    answered = time.perf_counter() - began
    done.set()
    await prober
    await runtime.stop()
    assert status == 202, body
    return answered, worst, int(body.split(b'"orders":')[1].rstrip(b"}"))


def run() -> list[Row]:
    results: list[tuple[float, float, int]] = []

    async def measure() -> None:
        results.append(await _measure())

    run_on_uvloop(measure())
    [(answered, worst, claimed)] = results
    assert claimed == COUNT
    return [
        Row(
            "triggers",
            "POST /orders/process with 1M pending: answer",
            answered,
            "s",
            "< 1",
            answered < 1,
        ),
        Row(
            "triggers",
            "longest wait of a request meanwhile",
            worst * 1000,
            "ms",
            "≤ 5",
            worst <= 0.005,
        ),
    ]
