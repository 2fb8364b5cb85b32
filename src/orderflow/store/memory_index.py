"""SortedIds: the in-memory store's indexes, sorted lists of order ids."""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedList


class SortedIds(SortedList):  # type: ignore[misc]  # sortedcontainers has no types
    """A SortedList of ids that nearly always grows at its end: a new order's id is the
    newest (ids sort by time). That case appends to the last sublist in place; it skips the
    bisection and the bookkeeping of `SortedList.add`, a third of the cost of a submit's two
    index inserts. Anything else (an older id, a sublist to split, a positional index to keep)
    takes `SortedList.add`. Relies on sortedcontainers' layout, pinned at 2.4.0; the store's
    tests check the lists with `SortedList._check` after every kind of change."""

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
