"""SQLite stores for tests: a new file in a folder of the test's own; a file filled fast; what
a file holds, read with sqlite3 directly, and the invariants it must keep across a crash."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orderflow.domain import Item, new_order, new_order_id
from orderflow.store.sqlite import SqliteOrderStore


def sqlite_url(folder: Path, name: str = "orders.db") -> str:
    """The URL of a file `name` in `folder` (absolute: sqlite:////…)."""
    return f"sqlite:///{folder.absolute() / name}"


@asynccontextmanager
async def file_store(folder: Path, name: str = "orders.db") -> AsyncIterator[SqliteOrderStore]:
    """A SqliteOrderStore on a new file in `folder`, closed afterwards."""
    store = await SqliteOrderStore.open(sqlite_url(folder, name))
    try:
        yield store
    finally:
        await store.close()


class FileState:
    """What a SQLite file of orderflow holds, read with sqlite3 directly (read-only, while a
    server may run on it): each order's status, history (statuses and reasons) and holder,
    and the event log."""

    def __init__(self, path: Path) -> None:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, status, tail, claim, owner FROM orders").fetchall()
            self.events = db.execute(
                "SELECT seq, type, order_id, status, reason FROM events ORDER BY seq"
            ).fetchall()
            self.last_seq = (
                db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
                or (0,)
            )[0]
            self.pruned_through = db.execute(
                "SELECT value FROM meta WHERE key = 'pruned_through'"
            ).fetchone()[0]
        finally:
            db.close()
        self.status: dict[str, str] = {}
        self.history: dict[str, list[tuple[str, str | None]]] = {}
        self.owner: dict[str, str | None] = {}
        for order_id, status, tail, claim, owner in rows:
            self.status[order_id] = status
            self.owner[order_id] = owner
            if tail is not None:
                entries = json.loads(b"{" + tail)["history"]
                self.history[order_id] = [(e["status"], e.get("reason")) for e in entries]
            elif claim is not None:
                self.history[order_id] = [("pending", None), ("processing", None)]
            else:
                self.history[order_id] = [("pending", None)]

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)

    def check(self, accepted: Iterable[str] = ()) -> None:
        """The invariants after a crash and a recovery: every order answered 201 is there;
        no order has two `shipped` entries; nothing is processing; every event exists once,
        seqs strictly growing with no gap, and each order's events are its history."""
        missing = set(accepted) - set(self.status)
        assert not missing, f"{len(missing)} accepted orders are lost"
        for order_id, history in self.history.items():
            statuses = [status for status, _ in history]
            assert statuses.count("shipped") <= 1, (order_id, statuses)
            assert statuses[0] == "pending", (order_id, statuses)
        processing = [i for i, s in self.status.items() if s == "processing"]
        assert not processing, f"{len(processing)} orders still processing"
        seqs = [event[0] for event in self.events]
        assert seqs == list(range(self.pruned_through + 1, self.last_seq + 1)), "a gap in seqs"
        by_order: dict[str, list[tuple[str | None, str | None]]] = {}
        for _, _, order_id, status, reason in self.events:
            by_order.setdefault(order_id, []).append((status, reason))
        if self.pruned_through == 0:
            for order_id, history in self.history.items():
                assert by_order.get(order_id) == history, (order_id, by_order.get(order_id))


def wait_until(check: Callable[[], bool], timeout_s: float = 60) -> None:
    """Poll `check` (every 50 ms) until it is true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not reached within {timeout_s} s"
        time.sleep(0.05)


async def fill(url: str, count: int) -> list[str]:
    """`count` pending orders in a new SQLite file at `url`, one microsecond apart; their ids."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    store = await SqliteOrderStore.open(url)
    try:
        ids = []
        for start in range(0, count, 1000):
            orders = []
            for n in range(start, min(count, start + 1000)):
                when = at + timedelta(microseconds=n)
                orders.append(new_order(new_order_id(when, n), f"c{n}", (Item("W", 1),), when))
            await asyncio.gather(*(store.add(order) for order in orders))
            ids += [order.id for order in orders]
        return ids
    finally:
        await store.close()
