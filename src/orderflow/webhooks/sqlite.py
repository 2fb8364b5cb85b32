"""SqliteWebhookStore: subscriptions and their delivery state in the order store's SQLite file
(migration 0002), written through its writer thread: a settlement is committed (and synced)
before the deliverer goes on, so the cursor, the retries and the deliveries log survive a crash.

Each method is one write (one transaction, shared with whatever else was committed at the same
time) or one read. Claims work as in memory, their leases on `clock`; a claim left by a run that
ended without a clean stop is released when the file is opened again (see SqliteOrderStore).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from orderflow.clock import Clock, SystemClock
from orderflow.domain import EventType, micros_since_epoch
from orderflow.errors import WebhookNotFound
from orderflow.store.sqlite_changes import instant
from orderflow.store.sqlite_db import Change, SqliteDatabase
from orderflow.webhooks import sqlite_sql as sql
from orderflow.webhooks.model import (
    KEEP_DELIVERIES,
    Claim,
    DeliveryOutcome,
    DeliveryRecord,
    Retry,
    Settlement,
    Subscription,
)
from orderflow.webhooks.store import MAX_RETRIES_CLAIMED, WebhookStore

_encode = msgspec.json.Encoder().encode
_decode_types = msgspec.json.Decoder(tuple[EventType, ...]).decode


def _micros(at: datetime | None) -> int | None:
    return None if at is None else micros_since_epoch(at)


def _instant(value: int | None) -> datetime | None:
    return None if value is None else instant(value)


def _subscription(row: Any) -> Subscription:
    id_, url, types, secret, ordered, created_at, cursor, disabled_at, reason, retry_at = row
    return Subscription(id_, url, _decode_types(types), secret, bool(ordered), instant(created_at),
                        cursor, _instant(disabled_at), reason, _instant(retry_at))  # fmt: skip


def _values(s: Subscription) -> tuple[Any, ...]:
    types = _encode([t.value for t in s.types])
    return (s.id, s.url, types, s.secret, s.ordered, _micros(s.created_at), s.cursor)


class SqliteWebhookStore(WebhookStore):
    """Args:
    database: the order store's file (its writer and readers), shared.
    clock: times leases and retries.
    """

    def __init__(self, database: SqliteDatabase, clock: Clock | None = None) -> None:
        self._db = database
        self._clock = clock or SystemClock()

    def _now(self, plus_s: float = 0.0) -> int:
        return micros_since_epoch(self._clock.now() + timedelta(seconds=plus_s))

    async def add(self, subscription: Subscription) -> None:
        await self._db.write(lambda c: c.db.execute(sql.INSERT, _values(subscription)), "webhook")

    async def ensure(self, subscription: Subscription) -> tuple[Subscription, bool]:
        def body(change: Change) -> tuple[Subscription, bool]:
            found = change.db.execute(sql.FIND_BY_URL, (subscription.url,)).fetchone()
            if found is not None:
                return _subscription(found), False
            change.db.execute(sql.INSERT, _values(subscription))
            return subscription, True

        return await self._db.write(body, "webhook")

    async def find(self, webhook_id: str) -> Subscription | None:
        found = self._db.read(lambda db: db.execute(sql.FIND, (webhook_id,)).fetchone())
        return None if found is None else _subscription(found)

    async def list_subscriptions(self) -> list[Subscription]:
        rows = self._db.read(lambda db: db.execute(sql.LIST).fetchall())
        return [_subscription(row) for row in rows]

    async def any(self) -> bool:
        return bool(self._db.read(lambda db: db.execute(sql.ANY).fetchone()[0]))

    async def delete(self, webhook_id: str) -> None:
        def body(change: Change) -> None:
            if not change.db.execute(sql.DELETE, (webhook_id,)).rowcount:
                raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
            change.db.execute(sql.FORGET_RETRIES, (webhook_id,))
            change.db.execute(sql.FORGET_DELIVERIES, (webhook_id,))

        await self._db.write(body, "webhook")

    async def replay(self, webhook_id: str, after_seq: int | None) -> Subscription:
        def body(change: Change) -> Subscription:
            db = change.db
            if not db.execute(sql.REPLAY, (after_seq, webhook_id)).rowcount:
                raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
            db.execute(sql.FORGET_RETRIES, (webhook_id,))
            return _subscription(db.execute(sql.FIND, (webhook_id,)).fetchone())

        return await self._db.write(body, "webhook")

    async def claim(self, owner: str, head: int, lease_s: float) -> Claim | None:
        def body(change: Change) -> Claim | None:
            db, now = change.db, self._now()
            due = db.execute(sql.DUE, (now, now, head)).fetchone()
            if due is None:
                return None
            webhook_id = due[0]
            db.execute(sql.TAKE, (owner, self._now(lease_s), webhook_id))
            token = db.execute(sql.TOKEN, (webhook_id,)).fetchone()[0]
            retries = db.execute(sql.DUE_RETRIES, (webhook_id, now, MAX_RETRIES_CLAIMED))
            subscription = _subscription(db.execute(sql.FIND, (webhook_id,)).fetchone())
            return Claim(subscription, owner, token, tuple(Retry(*r) for r in retries))

        return await self._db.write(body, "claim-webhook")

    async def settle(self, claim: Claim, settlement: Settlement, lease_s: float) -> bool:
        webhook_id, s, record = claim.subscription.id, settlement, settlement.record

        def body(change: Change) -> bool:
            db = change.db
            if db.execute(sql.HELD, (webhook_id, claim.owner, claim.token)).fetchone() is None:
                return False
            if s.seq is not None:
                if s.retry_attempt is None:
                    db.execute(sql.FORGET_RETRY, (webhook_id, s.seq))
                else:
                    due = self._now(s.retry_in_s)
                    db.execute(sql.KEEP_RETRY, (webhook_id, s.seq, s.retry_attempt, due))
                db.execute(sql.RETRY_AT, (webhook_id, webhook_id))
            db.execute(sql.SETTLE, (s.cursor, self._now(lease_s), webhook_id))
            if s.disable is not None:
                db.execute(sql.DISABLE, (self._now(), s.disable, webhook_id))
            if record is not None:
                db.execute(
                    sql.LOG_DELIVERY,
                    (webhook_id, record.seq, record.webhook_id, record.attempt,
                     record.status_code, record.latency_ms, record.error, record.outcome.value,
                     _micros(record.at)),
                )  # fmt: skip
                db.execute(sql.TRIM_DELIVERIES, (webhook_id, webhook_id, KEEP_DELIVERIES))
            return True

        return await self._db.write(body, "settle")

    async def release(self, claim: Claim, cursor: int) -> None:
        args = (self._now(), claim.token, cursor, claim.subscription.id, claim.owner)
        await self._db.write(lambda c: c.db.execute(sql.RELEASE, args), "webhook")

    async def deliveries(self, webhook_id: str) -> list[DeliveryRecord]:
        def body(db: Any) -> list[Any] | None:
            rows = db.execute(sql.DELIVERIES, (webhook_id, KEEP_DELIVERIES)).fetchall()
            if not rows and not db.execute(sql.EXISTS, (webhook_id,)).fetchone()[0]:
                return None
            return list(rows)

        rows = self._db.read(body)
        if rows is None:
            raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
        return [
            DeliveryRecord(
                seq,
                webhook_id_,
                attempt,
                status,
                latency,
                error,
                DeliveryOutcome(outcome),
                instant(at),
            )
            for seq, webhook_id_, attempt, status, latency, error, outcome, at in rows
        ]
