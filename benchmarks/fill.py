"""Orders for the in-process benchmarks: 2 items, distinct customers, one microsecond apart."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from orderflow.domain import Item, Order, new_order, new_order_id
from orderflow.store.memory import InMemoryOrderStore

START = datetime(2026, 1, 1, tzinfo=UTC)
_rng = random.Random(7)


def order(n: int) -> Order:
    at = START + timedelta(microseconds=n)
    items = (Item("Monster Energy", 2), Item("Protein Bar", 1))
    return new_order(new_order_id(at, _rng.getrandbits(64)), f"customer {n}", items, at)


async def fill(store: InMemoryOrderStore, start: int, stop: int) -> None:
    for n in range(start, stop):
        await store.add(order(n))
