"""EventLog: the in-memory store's event log, a list with a moving start; the store's event
methods are its `read_after`, `last_seq`, `prune` and `listener`.

The store appends under its own lock, in the same step as the change, so an event exists if and
only if its change was made, and seq order is the order of the changes. An entry's seq is not
stored: it is the log's base plus the entry's position, so an entry costs 64 bytes. The oldest
entries go when there are more than `retention` (and, by `prune`, when older than an age).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import msgspec

from orderflow.domain import EventType, OrderEvent, OrderStatus
from orderflow.errors import EventsPruned

COMPACT_EVERY = 4096  # dropped entries are deleted from the list in chunks, not one by one


class _Entry(msgspec.Struct, frozen=True, gc=False):
    type: EventType
    order_id: str
    status: OrderStatus | None
    at: datetime
    reason: str | None
    data: dict[str, Any] | None


class EventLog:
    """Args:
    retention: the most entries kept.
    lock: the store's lock; appends are made holding it, reads take it.
    compact_every: dropped entries are deleted from the list once there are this many.
    """

    def __init__(
        self, retention: int, lock: threading.Lock, *, compact_every: int = COMPACT_EVERY
    ) -> None:
        if retention < 1:
            raise ValueError("event retention must be at least 1")
        self._retention = retention
        self._compact_every = compact_every
        self._lock = lock
        self._entries: list[_Entry] = []
        self._start = 0  # entries before this index are dropped
        self._first_seq = 1  # the seq of self._entries[self._start]
        #: Called (holding the lock) after each append: wakes whoever waits for events.
        self.listener: Callable[[], None] | None = None

    @property
    def last_seq(self) -> int:
        """The seq of the newest event (0 when none was ever appended)."""
        return self._first_seq + len(self._entries) - self._start - 1

    @property
    def first_seq(self) -> int:
        """The seq of the oldest event kept (`last_seq` + 1 when none is kept)."""
        return self._first_seq

    def append(
        self,
        type: EventType,
        order_id: str,
        status: OrderStatus | None,
        at: datetime,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
        *,
        notify: bool = True,
    ) -> None:
        """Append one event; the caller holds the lock. `notify`: tell the listener now (a
        caller appending many tells it once, after the last: `notify()`)."""
        entries = self._entries
        entries.append(_Entry(type, order_id, status, at, reason, data))
        if len(entries) - self._start > self._retention:
            self._drop(1)
        if notify and self.listener is not None:
            self.listener()

    def notify(self) -> None:
        """Tell the listener there are new events."""
        if self.listener is not None:
            self.listener()

    def extend(
        self, type: EventType, order_ids: Iterable[str], status: OrderStatus, at: datetime
    ) -> None:
        """Append one event per order, all alike but for the order; the caller holds the lock."""
        self._entries.extend(_Entry(type, i, status, at, None, None) for i in order_ids)
        self._trim()

    def _trim(self) -> None:
        excess = len(self._entries) - self._start - self._retention
        if excess > 0:
            self._drop(excess)
        if self.listener is not None:
            self.listener()

    def _drop(self, count: int) -> None:
        self._start += count
        self._first_seq += count
        if self._start >= self._compact_every:  # at most this many dropped entries held on to
            del self._entries[: self._start]
            self._start = 0

    def prune(self, before: datetime, keep: int, limit: int) -> int:
        """Drop up to `limit` of the oldest events: those beyond the newest `keep`, and those
        dated before `before`; returns how many."""
        with self._lock:
            beyond = min(limit, max(0, self.last_seq - self._first_seq + 1 - keep))
            if beyond:
                self._drop(beyond)
            entries, start = self._entries, self._start
            end = min(len(entries), start + limit - beyond)
            count = 0
            while start + count < end and entries[start + count].at < before:
                count += 1
            if count:
                self._drop(count)
        return beyond + count

    def read_after(self, after: int, limit: int) -> list[OrderEvent]:
        """Events with seq > `after`, oldest first, at most `limit`; raises EventsPruned when
        some of them were dropped already."""
        if after < self._first_seq - 1:
            raise EventsPruned(after, self._first_seq)
        return list(self.read(after, limit))

    def read(self, after: int, limit: int | None) -> Iterator[OrderEvent]:
        """Events with seq > `after`, oldest first, at most `limit` (None: all kept)."""
        with self._lock:
            begin = self._start + max(0, after + 1 - self._first_seq)
            stop = len(self._entries) if limit is None else begin + limit
            seq = self._first_seq + begin - self._start
            picked = self._entries[begin:stop]
        for n, e in enumerate(picked):
            yield OrderEvent(seq + n, e.type, e.order_id, e.status, e.at, e.reason, e.data)

    def restore(self, events: list[OrderEvent], last_seq: int) -> None:
        """Start from `events` (from a snapshot: consecutive seqs, the newest `last_seq`, so
        seqs go on from there); the caller holds the lock."""
        self._entries = [
            _Entry(e.type, e.order_id, e.status, e.at, e.reason, e.data) for e in events
        ]
        self._start = 0
        self._first_seq = last_seq - len(events) + 1
        excess = len(self._entries) - self._retention
        if excess > 0:
            self._drop(excess)
