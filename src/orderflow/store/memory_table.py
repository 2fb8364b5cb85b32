"""OrderTable: the in-memory store's orders and their indexes (rows by id, ids sorted by time,
and by status), and the counts they give: orders by status, failed orders by reason.

Ids sort as (timestamp, id) (see `domain.new_order_id`), so the time index is a sorted list of
ids and a range query is a bisection plus the page: O(log n + k). Each status but processing has
an index of its own, so a status filter is an index lookup too; processing is transient and
entered in bulk by triggers, so it is found by walking the time range, at most `max_walk`
orders per page (a short page then comes with a cursor to go on from), instead of paying an
index update per claimed order. A search (a customer's prefix, an id's tail) walks so too: an
index of either would cost every order about 100 bytes more (README, Performance). Newest
first is the same walk, backwards. Not locked itself: the store calls it holding its lock.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from sortedcontainers import SortedList

from orderflow.domain import OrderQuery, OrderStatus, is_order_id, order_id_floor
from orderflow.store.memory_rows import Row, customer_key, last_reason

INDEXED = (OrderStatus.PENDING, OrderStatus.SHIPPED, OrderStatus.CANCELLED, OrderStatus.FAILED)
# Processing has no index: it is short-lived and entered in bulk, and a trigger of a million
# orders would pay an index insert for each. A page of it walks at most this many orders.
MAX_WALK = 10_000


class SortedIds(SortedList):  # type: ignore[misc]  # sortedcontainers has no types
    """A SortedList of ids that nearly always grows at its end: a new order's id is the
    newest (ids sort by time). That case appends to the last sublist in place; it skips the
    bisection and the bookkeeping of `SortedList.add`, a third of the cost of a submit's two
    index inserts. Anything else (an older id, a sublist to split, a positional index to keep)
    takes `SortedList.add`. Relies on sortedcontainers' layout, pinned at 2.4.0; the store's
    tests check the lists (`check`) after every kind of change.

    Args:
        load: the sublists' size (sortedcontainers' load factor); a small one makes splits and
            the positional index come soon, for tests.
    """

    def __new__(
        cls, iterable: Iterable[str] = (), *, load: int = SortedList.DEFAULT_LOAD_FACTOR
    ) -> SortedIds:
        return super().__new__(cls)  # type: ignore[no-any-return]

    def __init__(
        self, iterable: Iterable[str] = (), *, load: int = SortedList.DEFAULT_LOAD_FACTOR
    ) -> None:
        super().__init__()
        self._load = load
        self.update(iterable)

    def check(self) -> None:
        """sortedcontainers' own check of the lists; AssertionError when they are unsound."""
        self._check()

    def add(self, value: Any) -> None:
        maxes = self._maxes
        if maxes and value > maxes[-1] and not self._index:
            last = self._lists[-1]
            if len(last) < self._load << 1:
                last.append(value)
                maxes[-1] = value
                self._len += 1
                return
        super().add(value)


class OrderTable:
    """Rows by id and their indexes, and the failed orders counted by the reason of their
    latest history entry.

    Args:
        max_walk: the most orders a walk of the time index looks at (see `page`, `stretch`).
    """

    def __init__(self, *, max_walk: int = MAX_WALK) -> None:
        if max_walk < 1:
            raise ValueError("max_walk must be at least 1")
        self.max_walk = max_walk
        self.rows: dict[str, Row] = {}
        self._by_time = SortedIds()
        self._by_status = {status: SortedIds() for status in INDEXED}
        self._pending = self._by_status[OrderStatus.PENDING]
        self._failed_reasons: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.rows)

    def insert(self, order_id: str, row: Row) -> None:
        """A new row (its id is not in the table)."""
        self.rows[order_id] = row
        self._by_time.add(order_id)
        status = row.status
        if status is OrderStatus.PENDING:  # a new order: the usual case first
            self._pending.add(order_id)
        elif status is not OrderStatus.PROCESSING:
            self._by_status[status].add(order_id)
            if status is OrderStatus.FAILED:
                self._failed_reasons[last_reason(row) or ""] += 1

    def delete_pending(self, order_id: str) -> None:
        """Remove a pending order."""
        del self.rows[order_id]
        self._by_time.remove(order_id)
        self._pending.remove(order_id)

    def replace(
        self, order_id: str, old: Row, new: Row, old_reason: str | None, new_reason: str | None
    ) -> None:
        """`new` in place of `old`; the reasons are those of their latest history entries
        (counted for failed orders)."""
        self.rows[order_id] = new
        before, after = old.status, new.status
        if before is after:
            return
        if before in self._by_status:
            self._by_status[before].remove(order_id)
        if after in self._by_status:
            self._by_status[after].add(order_id)
        if before is OrderStatus.FAILED:
            failed = old_reason or ""
            self._failed_reasons[failed] -= 1
            if not self._failed_reasons[failed]:
                del self._failed_reasons[failed]
        if after is OrderStatus.FAILED:
            self._failed_reasons[new_reason or ""] += 1

    def take_pending(self, limit: int, below: str | None) -> list[str]:
        """Remove and return up to `limit` of the oldest pending ids (below the id `below`):
        the caller makes them processing."""
        pending = self._pending
        # No positional lookup (bisect_left, pending[i]): it makes a SortedList keep a
        # positional index, which every later add and pop pays for.
        ids = list(islice(pending.irange(maximum=below, inclusive=(True, False)), limit))
        pop = pending.pop
        for _ in ids:
            pop(0)  # the cheap end of a SortedList
        return ids

    def page(self, query: OrderQuery) -> tuple[list[Row], str | None]:
        """The rows of a page, and the cursor of the next one (`query.newest`: newest first,
        the cursor then excluded from above)."""
        index = self._by_time if query.status is None else self._by_status.get(query.status)
        low = None if query.start is None else order_id_floor(query.start)
        high = None if query.end is None else order_id_floor(query.end)
        cursor = query.cursor
        after = False
        if query.newest:
            if cursor is not None and (high is None or cursor < high):
                high = cursor
        else:
            after = cursor is not None and (low is None or cursor >= low)
            if after:
                low = cursor
        bounds = {
            "minimum": low,
            "maximum": high,
            "inclusive": (not after, False),
            "reverse": query.newest,
        }
        limit, rows = query.limit, self.rows
        if index is not None and not query.searches:
            ids = list(islice(index.irange(**bounds), limit + 1))
            if len(ids) <= limit:
                return list(map(rows.__getitem__, ids)), None
            del ids[limit:]
            return list(map(rows.__getitem__, ids)), ids[-1]
        tail = query.id_tail
        if tail is not None and is_order_id(tail):  # a whole id: no walk
            inside = (
                tail in rows
                and (low is None or tail > low or (tail == low and not after))
                and (high is None or tail < high)
            )
            walked = [tail] if inside else []
        else:
            # Processing, or a search: walk the index, a bounded stretch per page.
            walked = list(islice((index or self._by_time).irange(**bounds), self.max_walk))
        picked = [i for i in walked if _matches(query, i, rows[i])]
        resume = walked[-1] if len(walked) == self.max_walk else None
        if len(picked) > limit:
            del picked[limit:]
            resume = picked[-1]
        return list(map(rows.__getitem__, picked)), resume

    def stretch(
        self, status: OrderStatus, low: str | None, high: str | None, *, after: bool
    ) -> list[str]:
        """At most `max_walk` ids, oldest first, from `low` (excluded if `after`) to `high`
        (excluded): of orders in `status`, or, for processing (no index), of any order."""
        index = self._by_status.get(status, self._by_time)
        return list(islice(index.irange(low, high, (not after, False)), self.max_walk))

    def counts(self) -> dict[OrderStatus, int]:
        """Orders by status, every status."""
        counts = {status: len(index) for status, index in self._by_status.items()}
        counts[OrderStatus.PROCESSING] = len(self.rows) - sum(counts.values())
        return {status: counts[status] for status in OrderStatus}

    def oldest_pending(self) -> str | None:
        pending = self._pending
        return pending[0] if pending else None  # the first: no positional index built

    def common_failures(self, top: int) -> list[tuple[str, int]]:
        """The `top` most frequent reasons of failed orders; ties by reason, as PostgreSQL
        sorts them."""
        return heapq.nsmallest(
            top, self._failed_reasons.items(), key=lambda pair: (-pair[1], pair[0])
        )

    def sorted_rows(self) -> Iterator[Row]:
        """Every row, by id."""
        rows = self.rows
        return (rows[order_id] for order_id in self._by_time)

    def check(self) -> Iterable[str]:
        """Every disagreement between the rows and the indexes (for tests); empty when sound."""
        for index in (self._by_time, *self._by_status.values()):
            try:
                index.check()
            except AssertionError:
                yield "an index is out of shape"
        ids = set(self.rows)
        if set(self._by_time) != ids or len(self._by_time) != len(ids):
            yield "time index and rows disagree"
        for status, index in self._by_status.items():
            expected = {i for i, row in self.rows.items() if row.status is status}
            if set(index) != expected or len(index) != len(expected):
                yield f"{status} index and rows disagree"
        failed = Counter(
            last_reason(row) or "" for row in self.rows.values() if row.status is OrderStatus.FAILED
        )
        if failed != self._failed_reasons:
            yield "failure reasons and rows disagree"


def _matches(query: OrderQuery, order_id: str, row: Row) -> bool:
    """Whether the row passes the conditions of `query` that no index of the table answers."""
    if query.status is not None and row.status is not query.status:
        return False
    if query.id_tail is not None and not order_id.endswith(query.id_tail):
        return False
    return query.customer is None or customer_key(row).startswith(query.customer)
