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

import threading
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from itertools import islice

import msgspec
from sortedcontainers import SortedList

from orderflow.domain import (
    Event,
    HistoryEntry,
    Item,
    Order,
    OrderQuery,
    OrderStatus,
    Page,
    next_status,
    order_id_floor,
)
from orderflow.errors import OrderConflict, OrderNotFound
from orderflow.store.base import OrderStore

_INDEXED = (OrderStatus.PENDING, OrderStatus.SHIPPED, OrderStatus.CANCELLED, OrderStatus.FAILED)
# Processing has no index: it is short-lived and entered in bulk, and a trigger of a million
# orders would pay an index insert for each. A page of it walks at most this many orders.
_MAX_WALK = 10_000

_encode_head = msgspec.msgpack.Encoder().encode
_decode_head = msgspec.msgpack.Decoder(tuple[str, tuple[Item, ...]]).decode


class _Row(msgspec.Struct, frozen=True, gc=False):
    head: bytes  # msgpack of (customer, items)
    status: OrderStatus
    history: tuple[HistoryEntry, ...]  # history[0].at is the order's timestamp


def _to_order(order_id: str, row: _Row) -> Order:
    customer, items = _decode_head(row.head)
    history = row.history
    return Order(order_id, customer, items, history[0].at, row.status, history[-1].at, history)


class InMemoryOrderStore(OrderStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._by_time = SortedList()
        self._by_status = {status: SortedList() for status in _INDEXED}
        self._ready: deque[str] = deque()  # claimed, waiting for `acquire`; may hold stale ids
        self._owners: dict[str, str] = {}  # processing orders handed out, and to whom

    async def add(self, order: Order) -> None:
        row = _Row(_encode_head((order.customer, order.items)), order.status, order.history)
        with self._lock:
            if order.id in self._rows:
                raise OrderConflict(f"an order with id {order.id!r} exists")
            self._rows[order.id] = row
            self._by_time.add(order.id)
            if row.status in self._by_status:
                self._by_status[row.status].add(order.id)
            elif row.status is OrderStatus.PROCESSING:
                self._ready.append(order.id)

    async def find_order(self, order_id: str) -> Order | None:
        row = self._rows.get(order_id)  # one dict read is atomic; rows are immutable
        return None if row is None else _to_order(order_id, row)

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
        orders = [_to_order(order_id, row) for order_id, row in picked[: query.limit]]
        return Page(orders, orders[-1].id if more else resume)

    async def delete_pending(self, order_id: str) -> None:
        with self._lock:
            row = self._rows.get(order_id)
            if row is None:
                raise OrderNotFound(f"no order with id {order_id!r}")
            if row.status is not OrderStatus.PENDING:
                raise OrderConflict(f"only pending orders can be deleted; this one is {row.status}")
            del self._rows[order_id]
            self._by_time.remove(order_id)
            self._by_status[OrderStatus.PENDING].remove(order_id)

    async def transition(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None = None,
        *,
        owner: str | None = None,
    ) -> Order:
        with self._lock:
            old = self._rows.get(order_id)
            if old is None:
                raise OrderNotFound(f"no order with id {order_id!r}")
            status = next_status(old.status, event)
            if owner is not None and self._owners.get(order_id) != owner:
                raise OrderConflict(f"order {order_id} is no longer held by {owner}")
            if status is not OrderStatus.PROCESSING or event is Event.HANDBACK:
                self._owners.pop(order_id, None)  # leaving processing ends the hold
                if event is Event.HANDBACK:
                    self._ready.append(order_id)
            row = _Row(old.head, status, (*old.history, HistoryEntry(status, at, reason)))
            self._rows[order_id] = row
            self._move(order_id, old.status, status)
        return _to_order(order_id, row)

    def _move(self, order_id: str, old: OrderStatus, new: OrderStatus) -> None:
        if old in self._by_status:
            self._by_status[old].remove(order_id)
        if new in self._by_status:
            self._by_status[new].add(order_id)

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
        return len(ids)

    async def acquire(self, owner: str, limit: int) -> list[Order]:
        picked: list[tuple[str, _Row]] = []
        with self._lock:
            ready, rows, owners = self._ready, self._rows, self._owners
            while ready and len(picked) < limit:
                order_id = ready.popleft()
                row = rows.get(order_id)
                # Stale entries: cancelled or deleted since, or queued again after a release.
                if (
                    row is not None
                    and row.status is OrderStatus.PROCESSING
                    and order_id not in owners
                ):
                    owners[order_id] = owner
                    picked.append((order_id, row))
        return [_to_order(order_id, row) for order_id, row in picked]

    async def release_unshared(self, at: datetime, reason: str) -> int:
        entry = HistoryEntry(OrderStatus.PENDING, at, reason)
        released = 0
        with self._lock:
            rows, pending = self._rows, self._by_status[OrderStatus.PENDING]
            while self._ready:
                order_id = self._ready.popleft()
                row = rows.get(order_id)
                if row is None or row.status is not OrderStatus.PROCESSING:
                    continue
                if order_id in self._owners:
                    continue
                rows[order_id] = _Row(row.head, OrderStatus.PENDING, (*row.history, entry))
                pending.add(order_id)
                released += 1
        return released

    async def count_by_status(self) -> dict[OrderStatus, int]:
        with self._lock:
            counts = {status: len(index) for status, index in self._by_status.items()}
            counts[OrderStatus.PROCESSING] = len(self._rows) - sum(counts.values())
        return counts

    def __len__(self) -> int:
        return len(self._rows)

    def check_invariants(self) -> Iterable[str]:
        """Every disagreement between the map and the indexes (for tests); empty when sound."""
        with self._lock:
            ids = set(self._rows)
            if set(self._by_time) != ids or len(self._by_time) != len(ids):
                yield "time index and rows disagree"
            for status, index in self._by_status.items():
                expected = {i for i, row in self._rows.items() if row.status is status}
                if set(index) != expected or len(index) != len(expected):
                    yield f"{status} index and rows disagree"
            processing = {
                i for i, row in self._rows.items() if row.status is OrderStatus.PROCESSING
            }
            if not set(self._owners) <= processing:
                yield "an order that is not processing is held"
            if not processing <= set(self._owners) | set(self._ready):
                yield "a processing order is neither held nor ready"
