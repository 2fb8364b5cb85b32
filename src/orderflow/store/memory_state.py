"""The state a snapshot of the in-memory store writes and loads back, and a self-check for
tests. `MemoryState` and these methods are mixed into InMemoryOrderStore."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable

import msgspec

from orderflow.domain import Hold, Order, OrderEvent, OrderStatus
from orderflow.errors import OrderConflict
from orderflow.store.base import IdempotencyRecord
from orderflow.store.memory_events import EventLog
from orderflow.store.memory_index import SortedIds
from orderflow.store.memory_rows import Row, last_reason, order_of, row_of


class MemoryState(msgspec.Struct, frozen=True):
    """Everything the store keeps, as a snapshot writes it and loads it back."""

    orders: list[Order]
    idempotency: list[IdempotencyRecord]
    events: list[OrderEvent]
    last_event_seq: int


class MemoryStateMixin:
    """Snapshots and the self-check; the store's fields, as InMemoryOrderStore sets them."""

    _lock: threading.Lock
    _rows: dict[str, Row]
    _keys: dict[str, IdempotencyRecord]
    _by_time: SortedIds
    _by_status: dict[OrderStatus, SortedIds]
    _ready: deque[str]
    _holds: dict[str, Hold]
    _failed_reasons: Counter[str]
    events: EventLog

    def _insert(self, order_id: str, row: Row) -> None:
        raise NotImplementedError

    def dump(self) -> MemoryState:
        """Everything, for a snapshot; call when nothing is being written."""
        with self._lock:
            items = list(self._rows.items())
            keys = list(self._keys.values())
        orders = [order_of(row) for _, row in sorted(items)]
        return MemoryState(orders, keys, list(self.events.read(0, None)), self.events.last_seq)

    def load(self, state: MemoryState, on_order: Callable[[Order], Order] | None = None) -> None:
        """Add everything in `state` (from `dump`) to this empty store; `on_order` may change
        each order on the way in (a processing order goes back to pending, say)."""
        with self._lock:
            if self._rows:
                raise OrderConflict("snapshots load into an empty store")
            for order in state.orders:
                if on_order is not None:
                    order = on_order(order)
                self._insert(order.id, row_of(order))
            self._keys.update((record.key, record) for record in state.idempotency)
            self.events.restore(state.events, state.last_event_seq)

    # -- for tests ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def check_invariants(self) -> Iterable[str]:
        """Every disagreement between the map and the indexes (for tests); empty when sound."""
        with self._lock:
            for index in (self._by_time, *self._by_status.values()):
                try:
                    index._check()  # sortedcontainers' own check of its lists
                except AssertionError:
                    yield "an index is out of shape"
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
            if not set(self._holds) <= processing:
                yield "an order that is not processing is held"
            if not processing <= set(self._holds) | set(self._ready):
                yield "a processing order is neither held nor ready"
            failed = Counter(
                last_reason(row) or ""
                for row in self._rows.values()
                if row.status is OrderStatus.FAILED
            )
            if failed != self._failed_reasons:
                yield "failure reasons and rows disagree"
