"""The SQLite store's event log and its counts, read from the file.

`SqliteEventLog`: events are appended by each change in its own transaction (sqlite_changes),
and one writer commits them in order, so seq order is commit order: a reader that saw seq N
has seen every event before it, and none appears later below N. The listener hears of new
events right after their commit. Pruning drops the oldest and moves the horizon
(``pruned_through``), below which a reader is told the events are gone.

`SqliteCounts`: orders by status and failed orders by reason, as the changes moved them in
their transactions: a few rows read, never a count over the orders.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from orderflow.domain import EventType, OrderEvent, OrderStatus, ReasonCount, Stats, order_id_time
from orderflow.errors import EventsPruned
from orderflow.store import sqlite_changes as changes
from orderflow.store import sqlite_sql as sql
from orderflow.store.sqlite_db import SqliteDatabase

_TYPES: dict[str, EventType] = {type_.value: type_ for type_ in EventType}
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode
_STATUS = changes.STATUS
_instant = changes.instant


class SqliteEventLog:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def read(self, after: int, limit: int) -> list[OrderEvent]:
        """Events with seq > `after`, oldest first, at most `limit`; raises EventsPruned when
        some of them were pruned already."""

        def body(db: Any) -> tuple[list[Any], int]:
            return (
                db.execute(sql.READ_EVENTS, (after, limit)).fetchall(),
                db.execute(sql.PRUNED_THROUGH).fetchone()[0],
            )

        rows, pruned_through = self._db.read(body)
        if after < pruned_through:
            raise EventsPruned(after, pruned_through + 1)
        return [
            OrderEvent(
                seq,
                _TYPES[type_],
                order_id,
                None if status is None else _STATUS[status],
                _instant(at),
                reason,
                None if data is None else _decode_data(data),
            )
            for seq, type_, order_id, status, at, reason, data in rows
        ]

    def last_seq(self) -> int:
        """The seq of the newest event (0 when none was ever appended)."""
        row = self._db.read(lambda db: db.execute(sql.LAST_SEQ).fetchone())
        return 0 if row is None else int(row[0])

    async def prune(self, before: datetime, keep: int, limit: int) -> int:
        return await self._db.write(
            lambda change: changes.prune_events(change, before, keep, limit), "prune"
        )

    def watch(self, on_events: Callable[[], None]) -> None:
        self._db.listener = on_events


class SqliteCounts:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def by_status(self) -> dict[OrderStatus, int]:
        rows = self._db.read(lambda db: db.execute(sql.STATUS_COUNTS).fetchall())
        return _every_status(rows)

    def stats(self, top: int) -> Stats:
        def body(db: Any) -> tuple[list[Any], list[Any]]:
            return (
                db.execute(sql.STATUS_COUNTS).fetchall(),
                db.execute(sql.FAILED_REASONS, (top,)).fetchall(),
            )

        counts, reasons = self._db.read(body)
        return Stats(_every_status(counts), [ReasonCount(r, n) for r, n in reasons])

    def oldest_pending(self) -> datetime | None:
        row = self._db.read(lambda db: db.execute(sql.OLDEST_PENDING).fetchone())
        return None if row is None else order_id_time(row[0])


def _every_status(rows: list[Any]) -> dict[OrderStatus, int]:
    counts = {_STATUS[status]: count for status, count in rows}
    return {status: counts.get(status, 0) for status in OrderStatus}
