"""In process: the Python a request runs, without the server. The app is called over RSGI
with a stand-in protocol (the body ready, the answer dropped) on uvloop, as `orderflow serve`
runs it, so the figures leave out what granian and the kernel cost (the same for every app:
see the null apps in `http`). Where a POST's time goes: the same POST with the store's insert,
then the whole submit, answered at once; and the floor app of `benchmarks.nullapp`."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from benchmarks.http import ORDER
from benchmarks.nullapp import Floor, rsgi
from benchmarks.report import Row
from orderflow.domain import OrderQuery, OrderStatus
from orderflow.runtime import Runtime
from orderflow.server import build_app, settle_gc
from orderflow.service import Submitted

REQUESTS = 50_000
ROUNDS = 3
BODY = ORDER.encode()


class _Scope:
    def __init__(self, method: str, path: str, query: str = "") -> None:
        self.method, self.path, self.query_string = method, path, query
        self.headers = {"host": "127.0.0.1:8000", "content-type": "application/json",
                        "content-length": str(len(BODY))}  # fmt: skip


class _Protocol:
    """What granian hands an RSGI app, as little of it as these requests use."""

    def __call__(self) -> asyncio.Future[bytes]:
        body: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        body.set_result(BODY)
        return body

    def response_bytes(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status


async def _per_request(app: Any, scope: _Scope, status: int) -> float:
    """Median µs per request of `app` answering `scope`, checked to answer `status`."""
    protocol, samples = _Protocol(), []
    for _ in range(ROUNDS):
        begin = time.perf_counter()
        for _ in range(REQUESTS // ROUNDS):
            await app.__rsgi__(scope, protocol)
        samples.append((time.perf_counter() - begin) / (REQUESTS // ROUNDS) * 1e6)
        assert protocol.status == status, protocol.status
    return sorted(samples)[ROUNDS // 2]


async def _measure() -> dict[str, float]:
    figures: dict[str, float] = {}
    runtime = Runtime()  # the defaults of `orderflow serve`: in memory
    app = build_app(runtime)
    await runtime.start()
    try:
        settle_gc()
        post = _Scope("POST", "/orders")
        figures["POST /orders"] = await _per_request(app, post, 201)
        orders = (await runtime.store.list_orders(OrderQuery(limit=101))).orders
        one = orders[0].id
        figures["GET /orders/{id}"] = await _per_request(app, _Scope("GET", f"/orders/{one}"), 200)
        start, end = (
            urllib.parse.quote(f"{o.timestamp:%Y-%m-%dT%H:%M:%S.%fZ}")
            for o in (orders[0], orders[100])
        )
        query = f"from={start}&to={end}&limit=100"
        figures["GET /orders?from&to&limit=100"] = await _per_request(
            app, _Scope("GET", "/orders", query), 200
        )
        figures["GET /healthz"] = await _per_request(app, _Scope("GET", "/healthz"), 200)
        service, store = runtime.service, runtime.store
        store.add = _answer(None)  # type: ignore[method-assign]
        name = "POST /orders, the store's insert answered at once"
        figures[name] = await _per_request(app, post, 201)
        service.submit = _answer(Submitted(one, OrderStatus.PENDING))  # type: ignore[method-assign]
        figures["POST /orders, the whole submit answered at once"] = await _per_request(
            app, post, 201
        )
    finally:
        await runtime.stop()
    figures["floor app POST"] = await _per_request(Floor(), post, 201)
    figures["RSGI null app POST"] = await _per_request(rsgi, post, 200)
    return figures


def _answer(value: Any) -> Callable[..., Awaitable[Any]]:
    async def answer(*args: Any, **kwargs: Any) -> Any:
        return value

    return answer


def run() -> list[Row]:
    figures = uvloop.run(_measure())
    return [Row("inprocess", name, value, "µs a request") for name, value in figures.items()]
