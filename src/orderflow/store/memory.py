"""InMemoryOrderStore: rows in a dict, sorted id indexes, all behind one threading.Lock.

Ids sort as (timestamp, id) (see `domain.new_order_id`), so the time index is a SortedList of
ids and a range query is a bisection plus the page: O(log n + k). Each status but processing has
an index of its own, so a status filter is an index lookup too; processing is transient and
entered in bulk by triggers, so it is found by walking the time range, at most `_MAX_WALK`
orders per page (a short page then comes with a cursor to go on from), instead of paying an
index update per claimed order.

To keep a million orders in well under 500 bytes each, a row holds the fields fixed at submission
(customer, items) as one msgpack blob, and the status and history as objects; an `Order` is
rebuilt from a row outside the lock. The lock is never held across an `await`: every method does
its work in one synchronous block, so the store is safe from threads and tasks alike.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter, deque
from collections.abc import Mapping
from datetime import datetime
from itertools import islice
from typing import Any

from sortedcontainers import SortedList

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
from orderflow.store.base import IdempotencyRecord, OrderStore, ReasonCount, Stats
from orderflow.store.memory_events import EventLog, EventLogMixin
from orderflow.store.memory_state import (
    MemoryStateMixin,
    _decode_head,
    _encode_head,
    _Row,
)

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
        self._rows: dict[str, _Row] = {}
        self._by_time = SortedList()
        self._by_status = {status: SortedList() for status in _INDEXED}
        self._ready: deque[str] = deque()  # claimed, waiting for `acquire`; may hold stale ids
        self._holds: dict[str, Hold] = {}  # processing orders handed out, and to whom
        self._next_token = 1
        self._shipments: dict[str, dict[str, Any]] = {}  # only orders with a shipment result
        self._failed_reasons: Counter[str] = Counter()
        self._keys: dict[str, IdempotencyRecord] = {}
        self.events = EventLog(event_retention, self._lock)

    # -- orders ------------------------------------------------------------------------------

    async def add(
        self, order: Order, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        row = _Row(_encode_head((order.customer, order.items)), order.status, order.history)
        with self._lock:
            if idempotency is not None:
                existing = self._keys.get(idempotency.key)
                if existing is not None:
                    return existing
            if order.id in self._rows:
                raise OrderConflict(f"an order with id {order.id!r} exists")
            if idempotency is not None:
                self._keys[idempotency.key] = idempotency
            self._insert(order.id, row, order.shipment)
            self.events.append(EventType.SUBMITTED, order.id, order.status, order.updated_at)
        return None

    def _insert(self, order_id: str, row: _Row, shipment: dict[str, Any] | None) -> None:
        self._rows[order_id] = row
        self._by_time.add(order_id)
        if row.status in self._by_status:
            self._by_status[row.status].add(order_id)
        elif row.status is OrderStatus.PROCESSING:
            self._ready.append(order_id)
        if row.status is OrderStatus.FAILED:
            self._failed_reasons[row.history[-1].reason or ""] += 1
        if shipment is not None:
            self._shipments[order_id] = shipment

    async def find_order(self, order_id: str) -> Order | None:
        row = self._rows.get(order_id)  # one dict read is atomic; rows are immutable
        return None if row is None else self._to_order(order_id, row)

    def _to_order(self, order_id: str, row: _Row) -> Order:
        customer, items = _decode_head(row.head)
        history = row.history
        shipment = self._shipments.get(order_id) if row.status is OrderStatus.SHIPPED else None
        return Order(
            order_id, customer, items, history[0].at, row.status, history[-1].at, history, shipment
        )

    async def list_orders(self, query: OrderQuery) -> Page:
        index = self._by_time if query.status is None else self._by_status.get(query.status)
        low = None if query.start is None else order_id_floor(query.start)
        high = None if query.end is None else order_id_floor(query.end)
        after = query.cursor is not None and (low is None or query.cursor >= low)
        if after:
            low = query.cursor
        bounds = {"minimum": low, "maximum": high, "inclusive": (not after, False)}
        resume = None  # where the next page goes on when this one stopped walking
        with self._lock:
            rows = self._rows
            if index is not None:
                ids = islice(index.irange(**bounds), query.limit + 1)
                picked = [(order_id, rows[order_id]) for order_id in ids]
            else:  # processing: walk the time range, a bounded stretch per page
                walked = list(islice(self._by_time.irange(**bounds), _MAX_WALK))
                picked = [(i, rows[i]) for i in walked if rows[i].status is query.status]
                if len(walked) == _MAX_WALK:
                    resume = walked[-1]
        more = len(picked) > query.limit
        to_order = self._to_order
        orders = [to_order(order_id, row) for order_id, row in picked[: query.limit]]
        return Page(orders, orders[-1].id if more else resume)

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
            self._by_status[OrderStatus.PENDING].remove(order_id)
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
            row = self._apply(order_id, event, at, reason, hold, None)
        return self._to_order(order_id, row)

    def _apply(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None,
        hold: Hold | None,
        shipment: dict[str, Any] | None,
    ) -> _Row:
        """One checked transition, under the lock; returns the new row."""
        old = self._rows.get(order_id)
        if old is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        status = next_status(old.status, event)
        if hold is not None and self._holds.get(order_id) != hold:
            raise NotHeld(f"order {order_id} is not held by {hold.owner} under {hold.token}")
        if ends_hold(event):
            self._holds.pop(order_id, None)
            if event is Event.HANDBACK:
                self._ready.append(order_id)
        row = _Row(old.head, status, (*old.history, HistoryEntry(status, at, reason)))
        self._rows[order_id] = row
        if old.status is not status:
            self._move(order_id, old, status, reason)
        if shipment is not None:
            self._shipments[order_id] = shipment
        self.events.append(EVENT_TYPE[event], order_id, status, at, reason, shipment)
        return row

    def _move(self, order_id: str, old: _Row, new: OrderStatus, reason: str | None) -> None:
        if old.status in self._by_status:
            self._by_status[old.status].remove(order_id)
        if new in self._by_status:
            self._by_status[new].add(order_id)
        if old.status is OrderStatus.FAILED:
            failed = old.history[-1].reason or ""
            self._failed_reasons[failed] -= 1
            if not self._failed_reasons[failed]:
                del self._failed_reasons[failed]
        if new is OrderStatus.FAILED:
            self._failed_reasons[reason or ""] += 1

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[Order | None]:
        written: list[tuple[str, _Row] | None] = []
        with self._lock:
            for outcome in outcomes:
                try:
                    row = self._apply(
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
                    written.append((outcome.order_id, row))
        return [None if w is None else self._to_order(*w) for w in written]

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        tail = (HistoryEntry(OrderStatus.PROCESSING, at),)  # immutable: shared by the batch
        below = None if created_before is None else order_id_floor(created_before)
        with self._lock:
            pending = self._by_status[OrderStatus.PENDING]
            # The oldest first. No positional lookup (bisect_left, pending[i]): it makes a
            # SortedList keep a positional index, which every later add and pop pays for.
            ids = list(islice(pending.irange(maximum=below, inclusive=(True, False)), limit))
            pop = pending.pop
            for _ in ids:
                pop(0)  # the cheap end of a SortedList
            rows = self._rows
            for order_id in ids:
                row = rows[order_id]
                rows[order_id] = _Row(row.head, OrderStatus.PROCESSING, row.history + tail)
            self._ready.extend(ids)
            self.events.extend(EventType.PROCESSING, ids, OrderStatus.PROCESSING, at)
        return len(ids)

    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        picked: list[tuple[str, _Row, int]] = []
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
                    picked.append((order_id, row, token))
        return [Held(self._to_order(order_id, row), token) for order_id, row, token in picked]

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
                if row.status is source and where.reason_matches(row.history[-1].reason):
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
