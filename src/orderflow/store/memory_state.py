"""What the in-memory store keeps: its rows, the state a snapshot writes and loads back, and a
self-check for tests. `MemoryState` and these methods are mixed into InMemoryOrderStore."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from sortedcontainers import SortedList

from orderflow.domain import HistoryEntry, Hold, Item, Order, OrderEvent, OrderStatus
from orderflow.errors import OrderConflict
from orderflow.store.base import IdempotencyRecord
from orderflow.store.memory_events import EventLog

_encode_head = msgspec.msgpack.Encoder().encode
_decode_head = msgspec.msgpack.Decoder(tuple[str, tuple[Item, ...]]).decode


class _Row(msgspec.Struct, frozen=True, gc=False):
    head: bytes  # msgpack of (customer, items)
    status: OrderStatus
    history: tuple[HistoryEntry, ...]  # history[0].at is the order's timestamp


class MemoryState(msgspec.Struct, frozen=True):
    """Everything the store keeps, as a snapshot writes it and loads it back."""

    orders: list[Order]
    idempotency: list[IdempotencyRecord]
    events: list[OrderEvent]
    last_event_seq: int


class MemoryStateMixin:
    """Snapshots and the self-check; the store's fields, as InMemoryOrderStore sets them."""

    _lock: threading.Lock
    _rows: dict[str, _Row]
    _keys: dict[str, IdempotencyRecord]
    _by_time: SortedList
    _by_status: dict[OrderStatus, SortedList]
    _ready: deque[str]
    _holds: dict[str, Hold]
    _failed_reasons: Counter[str]
    events: EventLog

    def _insert(self, order_id: str, row: _Row, shipment: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def _to_order(self, order_id: str, row: _Row) -> Order:
        raise NotImplementedError

    def dump(self) -> MemoryState:
        """Everything, for a snapshot; call when nothing is being written."""
        with self._lock:
            items = list(self._rows.items())
            keys = list(self._keys.values())
        orders = [self._to_order(order_id, row) for order_id, row in sorted(items)]
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
                row = _Row(_encode_head((order.customer, order.items)), order.status, order.history)
                self._insert(order.id, row, order.shipment)
            self._keys.update((record.key, record) for record in state.idempotency)
            self.events.restore(state.events, state.last_event_seq)

    # -- for tests ---------------------------------------------------------------------------

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
            if not set(self._holds) <= processing:
                yield "an order that is not processing is held"
            if not processing <= set(self._holds) | set(self._ready):
                yield "a processing order is neither held nor ready"
            failed = Counter(
                row.history[-1].reason or ""
                for row in self._rows.values()
                if row.status is OrderStatus.FAILED
            )
            if failed != self._failed_reasons:
                yield "failure reasons and rows disagree"
