"""PostgresHistory: the PostgreSQL store's minute counts (folded in as events are numbered,
like the counts by status) and the instances that beat, shared by every instance of a
database."""

from __future__ import annotations

from datetime import datetime

from orderflow.store import postgres_sql as sql
from orderflow.store.base import Instance, InstanceBeat, MinuteCounts, live_first
from orderflow.store.postgres_db import Database
from orderflow.store.postgres_events import PostgresCounts


class PostgresHistory:
    def __init__(self, db: Database, counts: PostgresCounts) -> None:
        self._db = db
        self._counts = counts

    async def order_minutes(self, since: datetime) -> list[MinuteCounts]:
        await self._counts.fold()  # every change that completed, here or elsewhere, counted
        async with self._db.connection() as db:
            rows = await db.fetch(sql.ORDER_MINUTES, since)
        return [MinuteCounts(*row) for row in rows]

    async def prune_minutes(self, before: datetime) -> int:
        await self._counts.fold()  # else a change not folded yet would bring a minute back
        async with self._db.connection(changing=True, leaves_events=False) as db:
            status = await db.execute(sql.PRUNE_MINUTES, before)
        return int(status.split()[-1])

    async def heartbeat(self, beat: InstanceBeat) -> None:
        async with self._db.connection(changing=True, leaves_events=False) as db:
            await db.execute(
                sql.HEARTBEAT,
                beat.name,
                beat.started_at,
                beat.at,
                beat.held,
                beat.in_flight,
                beat.live_until,
            )

    async def stop_instance(self, name: str, at: datetime) -> None:
        async with self._db.connection(changing=True, leaves_events=False) as db:
            await db.execute(sql.STOP_INSTANCE, name)

    async def list_instances(self, at: datetime) -> list[Instance]:
        async with self._db.connection() as db:
            rows = await db.fetch(sql.INSTANCES)
        return live_first(
            [
                Instance(
                    row["name"],
                    row["started_at"],
                    row["last_heartbeat"],
                    row["held"],
                    row["in_flight"],
                    not row["stopped"] and row["live_until"] > at,
                )
                for row in rows
            ]
        )

    async def prune_instances(self, before: datetime) -> int:
        async with self._db.connection(changing=True, leaves_events=False) as db:
            status = await db.execute(sql.PRUNE_INSTANCES, before)
        return int(status.split()[-1])
