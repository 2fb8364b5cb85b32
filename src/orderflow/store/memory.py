"""InMemoryOrderStore: rows in a dict, sorted id indexes, all behind one threading.Lock.

Ids sort as (timestamp, id) (see `domain.new_order_id`), so the time index is a sorted list of
ids and a range query is a bisection plus the page: O(log n + k). Each status but processing has
an index of its own, so a status filter is an index lookup too; processing is transient and
entered in bulk by triggers, so it is found by walking the time range, at most `_MAX_WALK`
orders per page (a short page then comes with a cursor to go on from), instead of paying an
index update per claimed order.

A row keeps the order as its JSON (`memory_rows`): a page of orders is a join of bytes, and a
million orders fit in well under 500 bytes each. The lock is never held across an `await`:
every method does its work in one synchronous block, so the store is safe from threads and
tasks alike.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter, deque
from collections.abc import Mapping
from datetime import datetime
from itertools import islice
from typing import Any

import msgspec

from orderflow.domain import (
    EVENT_TYPE,
    Event,
    EventType,
    Held,
    HistoryEntry,
    Hold,
    Order,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    Page,
    ends_hold,
    next_status,
    order_id_floor,
    order_id_time,
)
from orderflow.errors import IllegalTransition, NotHeld, OrderConflict, OrderNotFound
from orderflow.store.base import IdempotencyRecord, JsonPage, OrderStore, ReasonCount, Stats
from orderflow.store.memory_events import EventLog, EventLogMixin
from orderflow.store.memory_index import SortedIds
from orderflow.store.memory_rows import (
    Row,
    claim_at,
    claimed,
    last_reason,
    order_of,
    render,
    render_many,
    row_of,
    tail_of,
)
from orderflow.store.memory_state import MemoryStateMixin

_INDEXED = (OrderStatus.PENDING, OrderStatus.SHIPPED, OrderStatus.CANCELLED, OrderStatus.FAILED)
# Processing has no index: it is short-lived and entered in bulk, and a trigger of a million
# orders would pay an index insert for each. A page of it walks at most this many orders.
_MAX_WALK = 10_000


class InMemoryOrderStore(MemoryStateMixin, EventLogMixin, OrderStore):
    """Args:
    event_retention: how many events the log keeps (the oldest go first); see `prune_events`
        for the age limit.
    """

    def __init__(self, *, event_retention: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, Row] = {}
        self._by_time = SortedIds()
        self._by_status = {status: SortedIds() for status in _INDEXED}
        self._pending = self._by_status[OrderStatus.PENDING]
        self._ready: deque[str] = deque()  # claimed, waiting for `acquire`; may hold stale ids
        self._holds: dict[str, Hold] = {}  # processing orders handed out, and to whom
        self._next_token = 1
        self._failed_reasons: Counter[str] = Counter()
        self._keys: dict[str, IdempotencyRecord] = {}
        self.events = EventLog(event_retention, self._lock)

    # -- orders ------------------------------------------------------------------------------

    async def add(
        self, order: Order, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        row = row_of(order)
        order_id = order.id
        with self._lock:
            if idempotency is not None:
                existing = self._keys.get(idempotency.key)
                if existing is not None:
                    return existing
            if order_id in self._rows:
                raise OrderConflict(f"an order with id {order_id!r} exists")
            if idempotency is not None:
                self._keys[idempotency.key] = idempotency
            self._insert(order_id, row)
            self.events.append(EventType.SUBMITTED, order_id, order.status, order.updated_at)
        return None

    def _insert(self, order_id: str, row: Row) -> None:
        self._rows[order_id] = row
        self._by_time.add(order_id)
        status = row.status
        if status is OrderStatus.PENDING:  # a new order: the usual case first
            self._pending.add(order_id)
        elif status is OrderStatus.PROCESSING:
            self._ready.append(order_id)
        else:
            self._by_status[status].add(order_id)
            if status is OrderStatus.FAILED:
                self._failed_reasons[last_reason(row) or ""] += 1

    async def find_order(self, order_id: str) -> Order | None:
        row = self._rows.get(order_id)  # one dict read is atomic; rows are immutable
        return None if row is None else order_of(row)

    async def find_order_json(self, order_id: str) -> bytes | None:
        row = self._rows.get(order_id)
        return None if row is None else render(row)

    async def list_orders(self, query: OrderQuery) -> Page:
        rows, next_cursor = self._page(query)
        return Page([order_of(row) for row in rows], next_cursor)

    async def list_orders_json(self, query: OrderQuery) -> JsonPage:
        rows, next_cursor = self._page(query)
        return JsonPage(msgspec.Raw(render_many(rows)), len(rows), next_cursor)

    def _page(self, query: OrderQuery) -> tuple[list[Row], str | None]:
        """The rows of a page, and the cursor of the next one."""
        index = self._by_time if query.status is None else self._by_status.get(query.status)
        low = None if query.start is None else order_id_floor(query.start)
        high = None if query.end is None else order_id_floor(query.end)
        after = query.cursor is not None and (low is None or query.cursor >= low)
        if after:
            low = query.cursor
        bounds = {"minimum": low, "maximum": high, "inclusive": (not after, False)}
        limit = query.limit
        with self._lock:
            rows = self._rows
            if index is not None:
                ids = list(islice(index.irange(**bounds), limit + 1))
                if len(ids) <= limit:
                    return list(map(rows.__getitem__, ids)), None
                del ids[limit:]
                return list(map(rows.__getitem__, ids)), ids[-1]
            # Processing: walk the time range, a bounded stretch per page.
            walked = list(islice(self._by_time.irange(**bounds), _MAX_WALK))
            status = query.status
            picked = [i for i in walked if rows[i].status is status]
            resume = walked[-1] if len(walked) == _MAX_WALK else None
            if len(picked) > limit:
                del picked[limit:]
                resume = picked[-1]
            return list(map(rows.__getitem__, picked)), resume

    async def delete_pending(self, order_id: str, at: datetime) -> None:
        with self._lock:
            row = self._rows.get(order_id)
            if row is None:
                raise OrderNotFound(f"no order with id {order_id!r}")
            if row.status is not OrderStatus.PENDING:
                raise IllegalTransition(
                    f"only pending orders can be deleted; this one is {row.status}"
                )
            del self._rows[order_id]
            self._by_time.remove(order_id)
            self._pending.remove(order_id)
            self.events.append(EventType.DELETED, order_id, None, at)

    async def transition(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None = None,
        *,
        hold: Hold | None = None,
    ) -> Order:
        with self._lock:
            return self._apply(order_id, event, at, reason, hold, None)

    def _apply(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None,
        hold: Hold | None,
        shipment: dict[str, Any] | None,
    ) -> Order:
        """One checked transition, under the lock; returns the order as changed."""
        old = self._rows.get(order_id)
        if old is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        status = next_status(old.status, event)
        if hold is not None and self._holds.get(order_id) != hold:
            raise NotHeld(f"order {order_id} is not held by {hold.owner} under {hold.token}")
        before = order_of(old)
        history = (*before.history, HistoryEntry(status, at, reason))
        if shipment is None:
            shipment = before.shipment
        if ends_hold(event):
            self._holds.pop(order_id, None)
            if event is Event.HANDBACK:
                self._ready.append(order_id)
        self._rows[order_id] = Row(old.head, status, tail_of(status, at, history, shipment))
        if old.status is not status:
            self._move(order_id, old.status, status, before.history[-1].reason, reason)
        self.events.append(EVENT_TYPE[event], order_id, status, at, reason, shipment)
        return Order(order_id, before.customer, before.items, before.timestamp, status, at,
                     history, shipment)  # fmt: skip

    def _move(
        self,
        order_id: str,
        old: OrderStatus,
        new: OrderStatus,
        old_reason: str | None,
        new_reason: str | None,
    ) -> None:
        if old in self._by_status:
            self._by_status[old].remove(order_id)
        if new in self._by_status:
            self._by_status[new].add(order_id)
        if old is OrderStatus.FAILED:
            failed = old_reason or ""
            self._failed_reasons[failed] -= 1
            if not self._failed_reasons[failed]:
                del self._failed_reasons[failed]
        if new is OrderStatus.FAILED:
            self._failed_reasons[new_reason or ""] += 1

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[Order | None]:
        written: list[Order | None] = []
        with self._lock:
            for outcome in outcomes:
                try:
                    order = self._apply(
                        outcome.order_id,
                        outcome.event,
                        outcome.at,
                        outcome.reason,
                        Hold(owner, outcome.token),
                        outcome.shipment,
                    )
                except (OrderNotFound, OrderConflict):
                    written.append(None)
                else:
                    written.append(order)
        return written

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        claim = claim_at(at)  # one for the batch
        below = None if created_before is None else order_id_floor(created_before)
        with self._lock:
            pending = self._pending
            # The oldest first. No positional lookup (bisect_left, pending[i]): it makes a
            # SortedList keep a positional index, which every later add and pop pays for.
            ids = list(islice(pending.irange(maximum=below, inclusive=(True, False)), limit))
            pop = pending.pop
            for _ in ids:
                pop(0)  # the cheap end of a SortedList
            rows = self._rows
            for order_id in ids:
                rows[order_id] = claimed(rows[order_id], claim)
            self._ready.extend(ids)
            self.events.extend(EventType.PROCESSING, ids, OrderStatus.PROCESSING, at)
        return len(ids)

    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        picked: list[tuple[Row, int]] = []
        with self._lock:
            ready, rows, holds = self._ready, self._rows, self._holds
            while ready and len(picked) < limit:
                order_id = ready.popleft()
                row = rows.get(order_id)
                # Stale entries: cancelled or deleted since, or queued again after a release.
                if (
                    row is not None
                    and row.status is OrderStatus.PROCESSING
                    and order_id not in holds
                ):
                    token = self._next_token
                    self._next_token += 1
                    holds[order_id] = Hold(owner, token)
                    picked.append((row, token))
        return [Held(order_of(row), token) for row, token in picked]

    async def renew(
        self, owner: str, holds: Mapping[str, int], lease_s: float, at: datetime
    ) -> set[str]:
        # No leases run out in one process; what matters is what `owner` no longer holds, and
        # what it holds without knowing.
        with self._lock:
            lost = {i for i, token in holds.items() if self._holds.get(i) != Hold(owner, token)}
            unknown = [
                order_id
                for order_id, hold in self._holds.items()
                if hold.owner == owner and holds.get(order_id) != hold.token
            ]
            for order_id in unknown:
                self._apply(
                    order_id, Event.HANDBACK, at, f"handed back: {owner} lost track", None, None
                )
        return lost

    async def retire(self, owner: str, at: datetime) -> int:
        with self._lock:
            mine = [order_id for order_id, hold in self._holds.items() if hold.owner == owner]
            for order_id in mine:
                self._apply(
                    order_id, Event.HANDBACK, at, f"handed back: {owner} stopped", None, None
                )
        return len(mine)

    async def release_unshared(self, at: datetime, reason: str) -> int:
        released = 0
        with self._lock:
            while self._ready:
                order_id = self._ready.popleft()
                row = self._rows.get(order_id)
                if row is None or row.status is not OrderStatus.PROCESSING:
                    continue
                if order_id in self._holds:
                    continue
                self._apply(order_id, Event.RELEASE, at, reason, None, None)
                released += 1
        return released

    # -- operators ---------------------------------------------------------------------------

    async def count_by_status(self) -> dict[OrderStatus, int]:
        with self._lock:
            counts = {status: len(index) for status, index in self._by_status.items()}
            counts[OrderStatus.PROCESSING] = len(self._rows) - sum(counts.values())
        return {status: counts[status] for status in OrderStatus}

    async def oldest_pending(self) -> datetime | None:
        with self._lock:
            pending = self._by_status[OrderStatus.PENDING]
            oldest = pending[0] if pending else None  # the first: no positional index built
        return None if oldest is None else order_id_time(oldest)

    async def stats(self, top: int = 20) -> Stats:
        by_status = await self.count_by_status()
        with self._lock:  # the most frequent first; ties by reason, as PostgreSQL sorts them
            common = heapq.nsmallest(
                top, self._failed_reasons.items(), key=lambda pair: (-pair[1], pair[0])
            )
        return Stats(by_status, [ReasonCount(reason, count) for reason, count in common])

    async def transition_matching(
        self,
        event: Event,
        source: OrderStatus,
        where: OrderFilter,
        at: datetime,
        reason: str | None,
        *,
        limit: int,
        after: str | None = None,
    ) -> tuple[list[str], str | None]:
        next_status(source, event)  # raises IllegalTransition
        low = None if where.start is None else order_id_floor(where.start)
        high = None if where.end is None else order_id_floor(where.end)
        inclusive = (True, False)
        if after is not None and (low is None or after >= low):
            low, inclusive = after, (False, False)
        # Processing has no index of its own: its stretch is one of the time index.
        index = self._by_status.get(source, self._by_time)
        moved: list[str] = []
        resume: str | None = None
        with self._lock:
            stretch = list(islice(index.irange(low, high, inclusive), _MAX_WALK))
            for order_id in stretch:
                row = self._rows[order_id]
                if row.status is source and (
                    where.reason_contains is None or where.reason_matches(last_reason(row))
                ):
                    self._apply(order_id, event, at, reason, None, None)
                    moved.append(order_id)
                    if len(moved) == limit:
                        resume = order_id
                        break
            else:
                if len(stretch) == _MAX_WALK:
                    resume = stretch[-1]
        return moved, resume

    # -- idempotency keys --------------------------------------------------------------------

    async def find_idempotency(self, key: str) -> IdempotencyRecord | None:
        return self._keys.get(key)

    async def prune_idempotency(self, created_before: datetime) -> int:
        with self._lock:
            old = [k for k, record in self._keys.items() if record.created_at < created_before]
            for key in old:
                del self._keys[key]
        return len(old)
