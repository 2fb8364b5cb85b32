"""WebhookStore: where subscriptions and their delivery state live (the contract, in each
method's docstring), and InMemoryWebhookStore; the conformance suite checks every backend.

Claiming works as it does for orders: a deliverer *claims* a due subscription under a lease
(owner, token); while the lease lasts nobody else is handed it, so at most one delivery attempt
per subscription is ever in flight; every write of the holder names its claim and is refused
once the claim is lost (its lease ran out and another took it, a replay, a delete). A holder
that dies leaves its lease to run out. Each method is atomic on its own.
"""

from __future__ import annotations

import abc
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from orderflow.clock import Clock, SystemClock
from orderflow.errors import WebhookNotFound
from orderflow.webhooks.model import (
    KEEP_DELIVERIES,
    Claim,
    DeliveryRecord,
    Retry,
    Settlement,
    Subscription,
)

MAX_RETRIES_CLAIMED = 100  # due retries handed out with one claim


class WebhookStore(abc.ABC):
    #: Whether other processes share this store (and so the subscriptions).
    shared = False

    @abc.abstractmethod
    async def add(self, subscription: Subscription) -> None:
        """Store a new subscription (its id is new: ids are 96 random bits)."""

    @abc.abstractmethod
    async def ensure(self, subscription: Subscription) -> tuple[Subscription, bool]:
        """The subscription to `subscription.url` (the oldest, when there are several) and
        False; or, when there is none, `subscription` stored, and True. Atomic across the
        processes sharing the store: instances starting together store it once."""

    @abc.abstractmethod
    async def find(self, webhook_id: str) -> Subscription | None:
        """The subscription, or None."""

    async def get(self, webhook_id: str) -> Subscription:
        """The subscription; raises WebhookNotFound."""
        subscription = await self.find(webhook_id)
        if subscription is None:
            raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
        return subscription

    @abc.abstractmethod
    async def list_subscriptions(self) -> list[Subscription]:
        """Every subscription, the oldest first."""

    @abc.abstractmethod
    async def any(self) -> bool:
        """Whether there is a subscription at all (so that events need looking at)."""

    @abc.abstractmethod
    async def delete(self, webhook_id: str) -> None:
        """Delete the subscription, its retries and its deliveries log; its holder's writes are
        refused from now on. Raises WebhookNotFound."""

    @abc.abstractmethod
    async def replay(self, webhook_id: str, after_seq: int | None) -> Subscription:
        """Deliver again after `after_seq` (None: after the cursor): set the cursor, forget
        every retry, enable the subscription again; returns it as it is now. Its current claim,
        if any, is spent: the holder's writes are refused, but its lease stands until it
        releases it (or the lease runs out), so an attempt in flight stays the only one.
        Raises WebhookNotFound."""

    @abc.abstractmethod
    async def claim(self, owner: str, head: int, lease_s: float) -> Claim | None:
        """Hand `owner` one due subscription under a new token, with a lease of `lease_s`
        seconds, and its due retries (at most MAX_RETRIES_CLAIMED, oldest event first); None
        when none is due. Due: enabled, held by nobody (or its holder's lease ran out), and
        either a retry is due, or its cursor is below `head` (the newest event's seq) while no
        retry holds it back (an ordered subscription waits for its retry). The subscription held
        least recently goes first.

        Atomic: a subscription is never handed to two owners while a lease lasts.
        """

    @abc.abstractmethod
    async def settle(self, claim: Claim, settlement: Settlement, lease_s: float) -> bool:
        """Write `settlement` (see `Settlement`) and extend the lease to `lease_s` seconds from
        now, in one atomic step, if `claim` still holds the subscription (owner and token);
        True if it did. The deliveries log keeps the newest KEEP_DELIVERIES records."""

    @abc.abstractmethod
    async def release(self, claim: Claim, cursor: int) -> None:
        """End `claim.owner`'s hold (whatever its token): held by nobody, and held least
        recently of all. The cursor becomes `cursor` only if the claim still holds its token (a
        replay since keeps its own). Nothing happens if `claim.owner` holds it no longer."""

    @abc.abstractmethod
    async def deliveries(self, webhook_id: str) -> list[DeliveryRecord]:
        """The newest attempts first (at most KEEP_DELIVERIES). Raises WebhookNotFound."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release what the store holds of its own (a shared pool stays its owner's)."""


@dataclass
class _Row:
    subscription: Subscription
    owner: str | None = None
    token: int = 0
    lease_expires_at: datetime | None = None  # once released: when (the "least recently" key)
    retries: dict[int, tuple[int, datetime]] = field(default_factory=dict)  # seq: attempt, due
    deliveries: deque[DeliveryRecord] = field(default_factory=lambda: deque(maxlen=KEEP_DELIVERIES))

    def held_by(self, claim: Claim) -> bool:
        return self.owner == claim.owner and self.token == claim.token

    def free(self, now: datetime) -> bool:
        return self.owner is None or (
            self.lease_expires_at is not None and self.lease_expires_at < now
        )

    def due(self, head: int, now: datetime) -> bool:
        s = self.subscription
        if s.disabled_at is not None or not self.free(now):
            return False
        if s.retry_at is not None and s.retry_at <= now:
            return True
        return s.cursor < head and (not s.ordered or s.retry_at is None)

    def retries_changed(self) -> None:
        due = min((d for _, d in self.retries.values()), default=None)
        self.subscription = msgspec.structs.replace(self.subscription, retry_at=due)


_NEVER = datetime.min.replace(tzinfo=UTC)


def _age(subscription: Subscription) -> tuple[datetime, str]:
    return subscription.created_at, subscription.id


class InMemoryWebhookStore(WebhookStore):
    """Subscriptions in a dict behind one lock (never held across an await); they last as long
    as the process. `clock` times leases and retries."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}

    async def add(self, subscription: Subscription) -> None:
        with self._lock:
            self._rows[subscription.id] = _Row(subscription)

    async def ensure(self, subscription: Subscription) -> tuple[Subscription, bool]:
        with self._lock:
            same = [
                r.subscription
                for r in self._rows.values()
                if r.subscription.url == subscription.url
            ]
            if same:
                return min(same, key=_age), False
            self._rows[subscription.id] = _Row(subscription)
        return subscription, True

    async def find(self, webhook_id: str) -> Subscription | None:
        with self._lock:
            row = self._rows.get(webhook_id)
            return None if row is None else row.subscription

    async def list_subscriptions(self) -> list[Subscription]:
        with self._lock:
            return sorted((row.subscription for row in self._rows.values()), key=_age)

    async def any(self) -> bool:
        return bool(self._rows)

    async def delete(self, webhook_id: str) -> None:
        with self._lock:
            if self._rows.pop(webhook_id, None) is None:
                raise WebhookNotFound(f"no webhook with id {webhook_id!r}")

    async def replay(self, webhook_id: str, after_seq: int | None) -> Subscription:
        with self._lock:
            row = self._row(webhook_id)
            row.token += 1
            row.retries.clear()
            s = row.subscription
            row.subscription = msgspec.structs.replace(
                s,
                cursor=s.cursor if after_seq is None else after_seq,
                disabled_at=None,
                disabled_reason=None,
                retry_at=None,
            )
            return row.subscription

    async def claim(self, owner: str, head: int, lease_s: float) -> Claim | None:
        now = self._clock.now()
        with self._lock:
            due = [row for row in self._rows.values() if row.due(head, now)]
            if not due:
                return None
            row = min(due, key=lambda r: (r.lease_expires_at or _NEVER, r.subscription.id))
            row.owner = owner
            row.token += 1
            row.lease_expires_at = now + timedelta(seconds=lease_s)
            retries = sorted(
                (Retry(seq, attempt) for seq, (attempt, due_at) in row.retries.items()
                 if due_at <= now),
                key=lambda r: r.seq,
            )[:MAX_RETRIES_CLAIMED]  # fmt: skip
            return Claim(row.subscription, owner, row.token, tuple(retries))

    async def settle(self, claim: Claim, settlement: Settlement, lease_s: float) -> bool:
        now = self._clock.now()
        with self._lock:
            row = self._rows.get(claim.subscription.id)
            if row is None or not row.held_by(claim):
                return False
            if settlement.seq is not None:
                if settlement.retry_attempt is None:
                    row.retries.pop(settlement.seq, None)
                else:
                    due = now + timedelta(seconds=settlement.retry_in_s)
                    row.retries[settlement.seq] = (settlement.retry_attempt, due)
                row.retries_changed()
            changes: dict[str, object] = {"cursor": settlement.cursor}
            if settlement.disable is not None:
                changes.update(disabled_at=now, disabled_reason=settlement.disable)
            row.subscription = msgspec.structs.replace(row.subscription, **changes)
            if settlement.record is not None:
                row.deliveries.append(settlement.record)
            row.lease_expires_at = now + timedelta(seconds=lease_s)
            return True

    async def release(self, claim: Claim, cursor: int) -> None:
        now = self._clock.now()
        with self._lock:
            row = self._rows.get(claim.subscription.id)
            if row is None or row.owner != claim.owner:
                return
            if row.token == claim.token:
                row.subscription = msgspec.structs.replace(row.subscription, cursor=cursor)
            row.owner = None
            row.lease_expires_at = now

    async def deliveries(self, webhook_id: str) -> list[DeliveryRecord]:
        with self._lock:
            return list(reversed(self._row(webhook_id).deliveries))

    def _row(self, webhook_id: str) -> _Row:
        row = self._rows.get(webhook_id)
        if row is None:
            raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
        return row
