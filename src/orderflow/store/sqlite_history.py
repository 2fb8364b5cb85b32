"""SqliteHistory: the SQLite store's minute counts (moved by each change, see
`sqlite_changes.flush`) and the instances that beat."""

from __future__ import annotations

from datetime import datetime

from orderflow.domain import minute_of, minute_start
from orderflow.store import sqlite_sql as sql
from orderflow.store.base import Instance, InstanceBeat, MinuteCounts, live_first
from orderflow.store.sqlite_changes import instant, micros
from orderflow.store.sqlite_db import Change, SqliteDatabase


class SqliteHistory:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def order_minutes(self, since: datetime) -> list[MinuteCounts]:
        first = minute_of(since)
        rows = self._db.read(lambda db: db.execute(sql.ORDER_MINUTES, (first,)).fetchall())
        return [MinuteCounts(minute_start(m), s, sh, f) for m, s, sh, f in rows]

    async def prune_minutes(self, before: datetime) -> int:
        # Minutes that ended before `before`: those before the one holding it.
        last = minute_of(before)
        return await self._db.write(
            lambda c: int(c.db.execute(sql.PRUNE_MINUTES, (last,)).rowcount), "prune"
        )

    async def heartbeat(self, beat: InstanceBeat) -> None:
        row = (
            beat.name,
            micros(beat.started_at),
            micros(beat.at),
            beat.held,
            beat.in_flight,
            micros(beat.live_until),
        )

        def body(change: Change) -> None:
            change.db.execute(sql.HEARTBEAT, row)

        await self._db.write(body, "heartbeat")

    async def stop_instance(self, name: str, at: datetime) -> None:
        def body(change: Change) -> None:
            change.db.execute(sql.STOP_INSTANCE, (name,))

        await self._db.write(body, "heartbeat")

    def list_instances(self, at: datetime) -> list[Instance]:
        now = micros(at)
        rows = self._db.read(lambda db: db.execute(sql.INSTANCES).fetchall())
        return live_first(
            [
                Instance(
                    name,
                    instant(started),
                    instant(beat),
                    held,
                    in_flight,
                    not stopped and live_until > now,
                )
                for name, started, beat, held, in_flight, live_until, stopped in rows
            ]
        )

    async def prune_instances(self, before: datetime) -> int:
        cutoff = micros(before)
        return await self._db.write(
            lambda c: int(c.db.execute(sql.PRUNE_INSTANCES, (cutoff,)).rowcount), "prune"
        )
