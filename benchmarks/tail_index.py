"""Whether the in-memory store should index orders by the tail of their id (GET /orders?order=):
the memory per order and the submit cost with such an index (a dict from each id's last 8
characters to the id, the cheapest index that answers a tail of 8 or more) against today's
store, which finds a tail by a bounded walk per page. Each variant fills a fresh process for
its memory, and submits in fresh processes, alternating; times are the process's CPU time (a
shared machine's other load shows less in it than in the wall clock).

    python -m benchmarks.tail_index
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from benchmarks.fill import fill, order
from benchmarks.inprocess import _per_request, _Scope
from orderflow.domain import Item, OrderQuery
from orderflow.runtime import Runtime
from orderflow.server import build_app, settle_gc
from orderflow.settings import Settings
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.memory_rows import Row as StoredRow
from orderflow.store.memory_table import OrderTable

COUNT = int(os.environ.get("TAIL_INDEX_ORDERS", "100000"))  # orders a memory figure is taken at
SUBMITS = 30_000
ROUNDS = 5
TAIL = 8


class TailIndexedTable(OrderTable):
    """OrderTable with ids by their last 8 characters (a tuple where ids share them)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tails: dict[str, str | tuple[str, ...]] = {}

    def insert(self, order_id: str, row: StoredRow) -> None:
        super().insert(order_id, row)
        tail = order_id[-TAIL:]
        found = self.tails.setdefault(tail, order_id)
        if found is not order_id:
            self.tails[tail] = (*((found,) if isinstance(found, str) else found), order_id)


def store_of(variant: str) -> InMemoryOrderStore:
    store = InMemoryOrderStore()
    if variant == "index":
        store._table = TailIndexedTable(max_walk=store._table.max_walk)
        store._rows = store._table.rows
    return store


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def _memory(variant: str) -> dict[str, float]:
    store = store_of(variant)
    gc.collect()
    tracemalloc.start()
    before, rss = tracemalloc.get_traced_memory()[0], _rss()
    await fill(store, 0, COUNT)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # RSS apart from tracemalloc's own bookkeeping: fill a second store without it.
    second = store_of(variant)
    gc.collect()
    rss = _rss()
    await fill(second, 0, COUNT)
    gc.collect()
    return {"traced": traced / COUNT, "rss": (_rss() - rss) / COUNT}


async def _submits(variant: str) -> dict[str, float]:
    """µs per in-process submit (OrderService.submit, and POST /orders without the server)
    of one variant, the median of ROUNDS rounds."""
    runtime = Runtime(Settings(), store=store_of(variant))
    app = build_app(runtime)
    await runtime.start()
    submits, posts = [], []
    try:
        settle_gc()
        items = (Item("Monster Energy", 2), Item("Protein Bar", 1))
        service = runtime.service
        for _ in range(ROUNDS):
            begin = time.process_time()
            for n in range(SUBMITS):
                await service.submit(f"customer {n}", items)
            submits.append((time.process_time() - begin) / SUBMITS * 1e6)
            posts.append(await _per_request(app, _Scope("POST", "/orders"), 201))
        assert (await runtime.store.list_orders(OrderQuery(limit=1))).orders
    finally:
        await runtime.stop()
    return {"submit": sorted(submits)[ROUNDS // 2], "post": sorted(posts)[ROUNDS // 2]}


async def _adds() -> dict[str, float]:
    """µs per `store.add` of COUNT orders made beforehand, into a new store of each variant,
    ROUNDS rounds alternating which goes first: the index's own cost, without the noise of
    the rest of a submit."""
    orders = [order(n) for n in range(COUNT)]
    samples: dict[str, list[float]] = {"walk": [], "index": []}
    for round_ in range(ROUNDS):
        for variant in ("walk", "index") if round_ % 2 else ("index", "walk"):
            store = store_of(variant)
            gc.collect()
            begin = time.process_time()
            for one in orders:
                await store.add(one)
            samples[variant].append((time.process_time() - begin) / COUNT * 1e6)
    return {variant: sorted(values)[ROUNDS // 2] for variant, values in samples.items()}


def _child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.tail_index", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(out.stdout)
    return figures


def main() -> None:
    if len(sys.argv) > 2:  # a child: one variant's submits
        print(json.dumps(asyncio.run(_submits(sys.argv[1]))))
        return
    if len(sys.argv) > 1:  # a child: one variant's memory
        print(json.dumps(asyncio.run(_memory(sys.argv[1]))))
        return
    for variant in ("walk", "index"):
        figures = _child(variant)
        print(
            f"{variant}: {figures['traced']:.0f} B per order traced,"
            f" {figures['rss']:.0f} B per order resident, at {COUNT:,} orders"
        )
    adds = asyncio.run(_adds())
    print(
        f"store.add: walk {adds['walk']:.2f} µs, index {adds['index']:.2f} µs an order"
        f" (median of {ROUNDS} rounds of {COUNT:,})"
    )
    runs: dict[str, list[dict[str, float]]] = {"walk": [], "index": []}
    for _ in range(3):  # fresh processes, alternating
        for variant in runs:
            runs[variant].append(_child(variant, "submits"))
    for variant, results in runs.items():
        submit = sorted(r["submit"] for r in results)[1]
        post = sorted(r["post"] for r in results)[1]
        print(
            f"{variant}: submit {submit:.2f} µs, POST /orders in process {post:.2f} µs"
            f" (median of {len(results)} processes x {ROUNDS} rounds of {SUBMITS:,})"
        )


if __name__ == "__main__":
    main()
