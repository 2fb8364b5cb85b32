"""The event log's part of PostgresOrderStore: reading, numbering and pruning the events every
statement appends, hearing that new ones are numbered, and the counts by status and by failure
reason that numbering folds in. Mixed into PostgresOrderStore."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from orderflow.domain import OrderEvent, OrderStatus
from orderflow.errors import EventsPruned
from orderflow.store import postgres_sql as sql
from orderflow.store.base import ReasonCount, Stats
from orderflow.store.postgres_rows import EVENT_TYPE, STATUS, decode_object


class PostgresEventLogMixin:
    """Needs the store's `_connection`; sets up `_written` and `_on_events`."""

    _written: asyncio.Event  # a change of this process left events to number
    _on_events: Callable[[], None] | None

    def _connection(self, *, changing: bool = False) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def read_events(self, after: int, limit: int) -> list[OrderEvent]:
        async with self._connection() as db:
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

    async def last_event_seq(self) -> int:
        async with self._connection() as db:
            row = await db.fetchrow(sql.EVENT_HORIZON)
        last: int = row["last"]
        return last

    async def prune_events(self, before: datetime, keep: int, limit: int = 10_000) -> int:
        async with self._connection(changing=True) as db:
            pruned: int = await db.fetchval(sql.PRUNE_EVENTS, before, keep, limit)
        return pruned

    def watch_events(self, on_events: Callable[[], None]) -> None:
        self._on_events = on_events

    async def wait_for_writes(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._written.wait()
        written = self._written.is_set()
        self._written.clear()
        return written

    async def sequence_events(self, limit: int = 10_000) -> int:
        async with self._connection() as db, db.transaction():
            if not await db.fetchval(sql.TRY_LOCK, sql.SEQUENCE_LOCK):
                return -1  # another instance is numbering right now
            row = await db.fetchrow(sql.SEQUENCE_EVENTS, limit)
            numbered: int = row["numbered"]
            if numbered:
                await db.execute(sql.NOTIFY, sql.EVENTS_CHANNEL, str(row["last"]))
        return numbered

    def _events_numbered(self) -> None:
        if self._on_events is not None:
            self._on_events()

    # -- counts, folded in as events are numbered ----------------------------------------------

    async def count_by_status(self) -> dict[OrderStatus, int]:
        await self._fold_counts()
        async with self._connection() as db:
            rows = await db.fetch(sql.STATUS_COUNTS)
        counts = {OrderStatus(row["status"]): row["count"] for row in rows}
        return {status: counts.get(status, 0) for status in OrderStatus}

    async def _fold_counts(self) -> None:
        """Fold every change that committed into the counts (numbering its events), waiting
        for a numbering another instance has under way: the counts then include every write
        that completed before the call, this process's own and others'. Waits by trying again
        (no pool connection held meanwhile), 2 s at most; then the counts may lag a little."""
        batch = 10_000
        for _ in range(200):
            numbered = await self.sequence_events(batch)
            if 0 <= numbered < batch:
                return
            if numbered < 0:  # another instance is numbering right now
                await asyncio.sleep(0.01)

    async def stats(self, top: int = 20) -> Stats:
        await self._fold_counts()
        async with self._connection() as db:
            rows = await db.fetch(sql.STATUS_COUNTS)
            reasons = await db.fetch(sql.FAILED_REASONS, top)
        counts = {OrderStatus(row["status"]): row["count"] for row in rows}
        return Stats(
            {status: counts.get(status, 0) for status in OrderStatus},
            [ReasonCount(row["reason"], row["count"]) for row in reasons],
        )
