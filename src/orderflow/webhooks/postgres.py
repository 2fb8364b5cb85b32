"""PostgresWebhookStore: subscriptions in PostgreSQL (migration 0004), shared by every instance
on the database, over the order store's own pool and error translation.

Each method is one statement (a replay and an `ensure`: one short transaction). A claim takes
the subscription row with ``FOR UPDATE SKIP LOCKED`` and gives it an owner, a new token and a
lease on the database's clock; a settlement names (owner, token) and changes nothing once they
no longer match. A write whose connection broke mid-statement is OutcomeUnknown; anything else
the database could not do is StoreUnavailable (nothing was changed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from orderflow.domain import EventType
from orderflow.errors import OutcomeUnknown, WebhookNotFound
from orderflow.store.postgres_db import Database
from orderflow.webhooks import postgres_sql as sql
from orderflow.webhooks.model import (
    Claim,
    DeliveryOutcome,
    DeliveryRecord,
    Retry,
    Settlement,
    Subscription,
)
from orderflow.webhooks.store import MAX_RETRIES_CLAIMED, WebhookStore


def _subscription(row: Any) -> Subscription:
    return Subscription(
        row["id"],
        row["url"],
        tuple(EventType(t) for t in row["types"]),
        row["secret"],
        row["ordered"],
        row["created_at"],
        row["cursor"],
        row["disabled_at"],
        row["disabled_reason"],
        row["retry_at"],
    )


class PostgresWebhookStore(WebhookStore):
    """Args:
    database: the order store's pool (and schema, and error translation), shared.
    """

    shared = True

    def __init__(self, database: Database) -> None:
        self._database = database

    @contextlib.asynccontextmanager
    async def _connection(self, *, changing: bool = False) -> AsyncIterator[Any]:
        # Webhook writes leave no events to number. A write whose connection broke (or timed
        # out) mid-statement may have committed. The database translates what comes out of
        # here (and lets ours through as it is).
        async with self._database.connection(leaves_events=False) as connection:
            try:
                yield connection
            except Exception as exc:
                if changing and (
                    isinstance(exc, (OSError, TimeoutError)) or connection.is_closed()
                ):
                    raise OutcomeUnknown(
                        f"the database connection was lost during a change: {type(exc).__name__}"
                    ) from exc
                raise

    async def add(self, subscription: Subscription) -> None:
        async with self._connection(changing=True) as db:
            await db.execute(sql.INSERT, *_values(subscription))

    async def ensure(self, subscription: Subscription) -> tuple[Subscription, bool]:
        async with self._connection(changing=True) as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", sql.ENSURE_LOCK)
            row = await db.fetchrow(sql.FIND_BY_URL, subscription.url)
            if row is not None:
                return _subscription(row), False
            await db.execute(sql.INSERT, *_values(subscription))
        return subscription, True

    async def find(self, webhook_id: str) -> Subscription | None:
        async with self._connection() as db:
            row = await db.fetchrow(sql.FIND, webhook_id)
        return None if row is None else _subscription(row)

    async def list_subscriptions(self) -> list[Subscription]:
        async with self._connection() as db:
            rows = await db.fetch(sql.LIST)
        return [_subscription(row) for row in rows]

    async def any(self) -> bool:
        async with self._connection() as db:
            return bool(await db.fetchval(sql.ANY))

    async def delete(self, webhook_id: str) -> None:
        async with self._connection(changing=True) as db:
            deleted = await db.fetchval(sql.DELETE, webhook_id)
        if deleted is None:
            raise WebhookNotFound(f"no webhook with id {webhook_id!r}")

    async def replay(self, webhook_id: str, after_seq: int | None) -> Subscription:
        async with self._connection(changing=True) as db, db.transaction():
            # The row lock first: a holder's settlement in flight then either commits before
            # the retries are forgotten or finds the token moved on.
            if await db.fetchval(sql.LOCK, webhook_id) is None:
                raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
            await db.execute(sql.FORGET_RETRIES, webhook_id)
            row = await db.fetchrow(sql.REPLAY, webhook_id, after_seq)
        return _subscription(row)

    async def claim(self, owner: str, head: int, lease_s: float) -> Claim | None:
        async with self._connection(changing=True) as db:
            row = await db.fetchrow(sql.CLAIM, owner, head, lease_s, MAX_RETRIES_CLAIMED)
        if row is None:
            return None
        retries = tuple(
            Retry(seq, attempt)
            for seq, attempt in zip(row["retry_seqs"], row["retry_attempts"], strict=True)
        )
        return Claim(_subscription(row), owner, row["token"], retries)

    async def settle(self, claim: Claim, settlement: Settlement, lease_s: float) -> bool:
        s, record = settlement, settlement.record
        async with self._connection(changing=True) as db:
            written = await db.fetchval(
                sql.SETTLE,
                claim.subscription.id,
                claim.owner,
                claim.token,
                lease_s,
                s.cursor,
                s.seq,
                s.retry_attempt,
                s.retry_in_s,
                s.disable,
                *(
                    (None,) * 8
                    if record is None
                    else (
                        record.seq,
                        record.webhook_id,
                        record.attempt,
                        record.status_code,
                        record.latency_ms,
                        record.error,
                        record.outcome.value,
                        record.at,
                    )
                ),
            )
        return bool(written)

    async def release(self, claim: Claim, cursor: int) -> None:
        async with self._connection(changing=True) as db:
            await db.execute(sql.RELEASE, claim.subscription.id, claim.owner, claim.token, cursor)

    async def deliveries(self, webhook_id: str) -> list[DeliveryRecord]:
        async with self._connection() as db:
            rows = await db.fetch(sql.DELIVERIES, webhook_id)
            if not rows and not await db.fetchval(sql.EXISTS, webhook_id):
                raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
        return [
            DeliveryRecord(
                row["seq"],
                row["webhook_id"],
                row["attempt"],
                row["status_code"],
                row["latency_ms"],
                row["error"],
                DeliveryOutcome(row["outcome"]),
                row["at"],
            )
            for row in rows
        ]


def _values(s: Subscription) -> tuple[Any, ...]:
    return (s.id, s.url, [t.value for t in s.types], s.secret, s.ordered, s.created_at, s.cursor)
