"""What one page of a customer search costs on SQLite, however many orders the prefix matches:
N orders whose customers are c0 … cN-1 (`c` matches all, `c1` one in nine, `c1234` 11 orders
at 300k), the first page and the tenth (after nine cursors), oldest and newest first, 100 a
page, as the API asks (the page as JSON). The median of 7 rounds of 5 pages, in ms.

    python -m benchmarks.search_pages [orders, default 300000]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from orderflow.domain import Item, OrderQuery, new_order, new_order_id, search_key
from orderflow.store.sqlite import SqliteOrderStore

PREFIXES = ("c", "c1", "c12", "c1234", "c123456")


async def fill(store: SqliteOrderStore, count: int) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for start in range(0, count, 1000):
        orders = []
        for n in range(start, min(count, start + 1000)):
            when = at + timedelta(milliseconds=n)
            orders.append(new_order(new_order_id(when, n), f"c{n}", (Item("W", 1),), when))
        await asyncio.gather(*(store.add(order) for order in orders))


async def page_ms(store: SqliteOrderStore, query: OrderQuery) -> tuple[float, int]:
    samples = []
    for _ in range(7):
        begin = time.perf_counter()
        for _ in range(5):
            page = await store.list_orders_json(query)
        samples.append((time.perf_counter() - begin) / 5)
    return statistics.median(samples) * 1e3, page.count


async def measure(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'orders.db'}"
        store = await SqliteOrderStore.open(url)
        try:
            await fill(store, count)
        finally:
            await store.close()  # a checkpoint: what the pages read is in the file
        store = await SqliteOrderStore.open(url)
        try:
            bound = getattr(store, "search_bound", None)
            print(f"{count} orders; search_bound {bound}; ms a page (orders in it)")
            for text in PREFIXES:
                for newest in (False, True):
                    query = OrderQuery(customer=search_key(text), limit=100, newest=newest)
                    tenth = query
                    for _ in range(9):
                        cursor = (await store.list_orders_json(tenth)).next_cursor
                        if cursor is None:
                            break
                        tenth = msgspec.structs.replace(tenth, cursor=cursor)
                    first, first_count = await page_ms(store, query)
                    later, later_count = await page_ms(store, tenth)
                    print(
                        f"customer={text:<8} sort={'newest' if newest else 'oldest'}:"
                        f" first {first:7.3f} ({first_count:3}),"
                        f" tenth {later:7.3f} ({later_count:3})"
                    )
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000))
