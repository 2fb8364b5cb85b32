"""The PostgreSQL store's event log and its counts.

`PostgresEventLog`: every statement that changes orders appends their events, as one batch, to
the ``events`` table in that same statement; a batch is numbered (its events given their seqs,
one after another) once its transaction is over, so that seq order is commit order and no
reader ever sees a gap fill in later. Numbering writes one small row per batch, never the
events themselves. The log numbers them itself, right after this process wrote some and every
poll interval for the others', and says so (NOTIFY) to every instance.

`PostgresCounts`: orders by status and failed orders by reason, kept in small tables that
numbering folds each change into, so that they are read, never counted by a scan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from orderflow.domain import OrderEvent, OrderStatus, ReasonCount, Stats
from orderflow.errors import EventsPruned
from orderflow.store import postgres_sql as sql
from orderflow.store.postgres_db import Database
from orderflow.store.postgres_rows import EVENT_TYPE, STATUS, decode_object
from orderflow.supervise import OutageLog, supervised

log = logging.getLogger("orderflow.store.postgres")

_BURST_S = 0.002  # a burst of writes is numbered in one round


class PostgresEventLog:
    """Args:
    poll_s: how often to number what other instances wrote (ours is numbered at once).
    """

    def __init__(self, db: Database, *, poll_s: float = 1.0) -> None:
        self._db = db
        self._poll_s = poll_s
        self._on_events: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def read(self, after: int, limit: int) -> list[OrderEvent]:
        async with self._db.connection() as db:
            rows = await db.fetch(sql.READ_EVENTS, after, limit)
            if not rows or rows[0]["seq"] != after + 1:  # a gap: pruned, or nothing yet
                horizon = await db.fetchval(sql.PRUNED_THROUGH)
                if after < horizon:
                    raise EventsPruned(after, horizon + 1)
        return [
            OrderEvent(
                row["seq"],
                EVENT_TYPE[row["type"]],
                row["order_id"],
                None if row["status"] is None else STATUS[row["status"]],
                row["at"],
                row["reason"],
                None if row["data"] is None else decode_object(row["data"]),
            )
            for row in rows
        ]

    async def last_seq(self) -> int:
        async with self._db.connection() as db:
            row = await db.fetchrow(sql.EVENT_HORIZON)
        last: int = row["last"]
        return last

    async def prune(self, before: datetime, keep: int, limit: int) -> int:
        async with self._db.connection(changing=True) as db:
            pruned: int = await db.fetchval(sql.PRUNE_EVENTS, before, keep, limit)
        return pruned

    async def number(self, limit: int = 10_000) -> int:
        """Number up to `limit` events of changes that completed; returns how many, or -1 when
        another instance is numbering right now."""
        async with self._db.connection() as db, db.transaction():
            if not await db.fetchval(sql.TRY_LOCK, sql.SEQUENCE_LOCK):
                return -1
            numbered: int = await db.fetchval(sql.SEQUENCE_EVENTS, limit)
        return numbered

    def watch(self, on_events: Callable[[], None]) -> None:
        """Call `on_events()` when events were numbered (here, or by another instance: see
        `numbered`), and number events from now on, until `close`."""
        self._on_events = on_events
        if self._task is None:
            self._task = asyncio.create_task(
                supervised(
                    self._number_round,
                    every_s=self._poll_s,
                    log=OutageLog(log, "numbering events"),
                    wake=self._db.written,
                ),
                name="orderflow-event-numbering",
            )

    def numbered(self) -> None:
        """Events were numbered (a NOTIFY from any instance)."""
        if self._on_events is not None:
            self._on_events()

    async def _number_round(self) -> None:
        await asyncio.sleep(_BURST_S)
        for _ in range(100):  # another instance may be at it: ours follow in a moment
            if await self.number() >= 0:
                return
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class PostgresCounts:
    """Orders by status and the most frequent failure reasons, as numbering folded them in."""

    def __init__(self, db: Database, events: PostgresEventLog) -> None:
        self._db = db
        self._events = events

    async def by_status(self) -> dict[OrderStatus, int]:
        await self.fold()
        async with self._db.connection() as db:
            rows = await db.fetch(sql.STATUS_COUNTS)
        return _every_status(rows)

    async def stats(self, top: int) -> Stats:
        await self.fold()
        async with self._db.connection() as db:
            rows = await db.fetch(sql.STATUS_COUNTS)
            reasons = await db.fetch(sql.FAILED_REASONS, top)
        return Stats(
            _every_status(rows), [ReasonCount(row["reason"], row["count"]) for row in reasons]
        )

    async def fold(self) -> None:
        """Fold every change that committed into the counts (numbering its events), waiting
        for a numbering another instance has under way: the counts then include every write
        that completed before the call, this process's own and others'. Waits by trying again
        (no pool connection held meanwhile), 2 s at most; then the counts may lag a little."""
        batch = 10_000
        for _ in range(200):
            numbered = await self._events.number(batch)
            if 0 <= numbered < batch:
                return
            if numbered < 0:  # another instance is numbering right now
                await asyncio.sleep(0.01)


def _every_status(rows: list[Any]) -> dict[OrderStatus, int]:
    counts = {STATUS[row["status"]]: row["count"] for row in rows}
    return {status: counts.get(status, 0) for status in OrderStatus}
