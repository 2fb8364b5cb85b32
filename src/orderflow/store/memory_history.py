"""What the in-memory store keeps of the recent past: `MinuteRing`, the orders submitted,
shipped and failed per minute, and `InstanceBook`, the processors that beat (in memory, the
one process). Neither takes a lock: the store calls them under its own. The ring forgets a minute
by itself when its slot comes round again a day and an hour later."""

from __future__ import annotations

from datetime import datetime

from orderflow.domain import minute_start
from orderflow.store.base import Instance, InstanceBeat, MinuteCounts, live_first

#: Minutes the ring holds: a day and an hour, so a full day is always there to read.
RING_MINUTES = 25 * 60
SUBMITTED, SHIPPED, FAILED = 0, 1, 2


class MinuteRing:
    """One slot per minute, reused a ring's length later: a slot of an older minute is cleared
    when a newer one comes to it, so nothing needs pruning and the ring never grows."""

    def __init__(self, size: int = RING_MINUTES) -> None:
        self._size = size
        self._minutes = [-1] * size  # which minute each slot counts
        self._counts = [[0, 0, 0] for _ in range(size)]

    def count(self, minute: int, kind: int, n: int = 1) -> None:
        """Add `n` to `kind` (SUBMITTED, SHIPPED or FAILED) of `minute`; a minute older than
        the ring holds is not counted."""
        slot = minute % self._size
        held = self._minutes[slot]
        if held != minute:
            if held > minute:
                return
            self._minutes[slot] = minute
            self._counts[slot] = [0, 0, 0]
        self._counts[slot][kind] += n

    def prune(self, before: int) -> int:
        """Forget the minutes before `before`; returns how many were counted."""
        pruned = 0
        for slot, minute in enumerate(self._minutes):
            if 0 <= minute < before:
                self._minutes[slot] = -1
                pruned += 1
        return pruned

    def since(self, first: int) -> list[MinuteCounts]:
        """The minutes from `first` on with something counted, oldest first."""
        counts = self._counts
        found = sorted(
            (minute, slot)
            for slot, minute in enumerate(self._minutes)
            if minute >= first and any(counts[slot])
        )
        return [MinuteCounts(minute_start(minute), *counts[slot]) for minute, slot in found]


class InstanceBook:
    """The instances that beat, by name: (the last beat, whether it stopped since)."""

    def __init__(self) -> None:
        self._beats: dict[str, tuple[InstanceBeat, bool]] = {}

    def beat(self, beat: InstanceBeat) -> None:
        self._beats[beat.name] = (beat, False)

    def stop(self, name: str, at: datetime) -> None:
        found = self._beats.get(name)
        if found is not None:
            self._beats[name] = (found[0], True)

    def listed(self, at: datetime) -> list[Instance]:
        return live_first(
            [
                Instance(
                    b.name,
                    b.started_at,
                    b.at,
                    b.held,
                    b.in_flight,
                    not stopped and b.live_until > at,
                )
                for b, stopped in self._beats.values()
            ]
        )

    def prune(self, before: datetime) -> int:
        gone = [name for name, (b, _) in self._beats.items() if b.at < before]
        for name in gone:
            del self._beats[name]
        return len(gone)
