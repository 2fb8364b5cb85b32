"""InMemoryOrderStore: orders in an `OrderTable`, events in an `EventLog`, the holds and the
ready queue beside them, all behind one threading.Lock.

A row keeps the order as its JSON (`memory_rows`): a page of orders is a join of bytes, and a
million orders fit in well under 500 bytes each. The lock is never held across an `await`:
every method does its work in one synchronous block, so the store is safe from threads and
tasks alike. It is its own `Snapshots`: `dump` and `load` are the state a snapshot writes and
reads back.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from orderflow.domain import (
    EVENT_TYPE,
    Event,
    EventType,
    Held,
    Hold,
    Order,
    OrderEvent,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    Page,
    Parcel,
    ReasonCount,
    Stats,
    ends_hold,
    lost_track,
    minute_of,
    next_status,
    order_id_floor,
    order_id_time,
)
from orderflow.errors import IllegalTransition, NotHeld, OrderConflict, OrderNotFound
from orderflow.store.base import (
    IdempotencyRecord,
    Instance,
    InstanceBeat,
    JsonPage,
    MemoryState,
    MinuteCounts,
    OrderStore,
    Snapshots,
)
from orderflow.store.memory_events import EventLog
from orderflow.store.memory_history import (
    FAILED,
    SHIPPED,
    SUBMITTED,
    InstanceBook,
    MinuteRing,
)
from orderflow.store.memory_rows import (
    Row,
    advanced,
    claim_at,
    claimed,
    customer_key,
    last_reason,
    order_of,
    render,
    render_many,
    row_of,
)
from orderflow.store.memory_table import MAX_WALK, OrderTable

_encode = msgspec.json.Encoder().encode


class InMemoryOrderStore(OrderStore):
    """Args:
    event_retention: how many events the log keeps (the oldest go first); see `prune_events`
        for the age limit.
    max_walk: the most orders one page of processing orders or of a search, or one batch of
        a bulk action, looks at (processing, customers and id tails have no index here).
    """

    def __init__(self, *, event_retention: int = 100_000, max_walk: int = MAX_WALK) -> None:
        self._lock = threading.Lock()
        self._table = OrderTable(max_walk=max_walk)
        self._rows = self._table.rows  # read without the lock: one dict read is atomic
        self._ready: deque[str] = deque()  # claimed, waiting for `acquire`; may hold stale ids
        self._holds: dict[str, Hold] = {}  # processing orders handed out, and to whom
        self._next_token = 1
        self._keys: dict[str, IdempotencyRecord] = {}
        self._events = EventLog(event_retention, self._lock)
        self._at: datetime | None = None  # the time of the last change, and its JSON
        self._at_json = b""
        self._at_minute = 0
        self._minutes = MinuteRing()
        self._instances = InstanceBook()

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
            self._minutes.count(minute_of(order.updated_at), SUBMITTED)
            self._events.append(EventType.SUBMITTED, order_id, order.status, order.updated_at)
        return None

    def _insert(self, order_id: str, row: Row) -> None:
        self._table.insert(order_id, row)
        if row.status is OrderStatus.PROCESSING:
            self._ready.append(order_id)

    async def find_order(self, order_id: str) -> Order | None:
        row = self._rows.get(order_id)  # one dict read is atomic; rows are immutable
        return None if row is None else order_of(row)

    async def find_order_json(self, order_id: str) -> bytes | None:
        row = self._rows.get(order_id)
        return None if row is None else render(row)

    async def list_orders(self, query: OrderQuery) -> Page:
        with self._lock:
            rows, next_cursor = self._table.page(query)
        return Page([order_of(row) for row in rows], next_cursor)

    async def list_orders_json(self, query: OrderQuery) -> JsonPage:
        with self._lock:
            rows, next_cursor = self._table.page(query)
        return JsonPage(msgspec.Raw(render_many(rows)), len(rows), next_cursor)

    async def delete_pending(self, order_id: str, at: datetime) -> None:
        with self._lock:
            row = self._rows.get(order_id)
            if row is None:
                raise OrderNotFound(f"no order with id {order_id!r}")
            if row.status is not OrderStatus.PENDING:
                raise IllegalTransition(
                    f"only pending orders can be deleted; this one is {row.status}"
                )
            self._table.delete_pending(order_id)
            self._events.append(EventType.DELETED, order_id, None, at)

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
        return order_of(row)

    def _apply(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None,
        hold: Hold | None,
        shipment: dict[str, Any] | None,
        notify: bool = True,
    ) -> Row:
        """One checked transition, under the lock; returns the row as changed. The row is
        rewritten as bytes (`memory_rows.advanced`), never decoded. `notify`: tell the event
        log's listener now (else the caller does, once, after a batch)."""
        old = self._rows.get(order_id)
        if old is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        status = next_status(old.status, event)
        if hold is not None:
            held = self._holds.get(order_id)
            if held is None or held.token != hold.token or held.owner != hold.owner:
                raise NotHeld(f"order {order_id} is not held by {hold.owner} under {hold.token}")
        if ends_hold(event):
            self._holds.pop(order_id, None)
            if event is Event.HANDBACK:
                self._ready.append(order_id)
        if at is not self._at:  # a batch of changes shares its time: encoded once
            self._at, self._at_json, self._at_minute = at, _encode(at), minute_of(at)
        if status is OrderStatus.SHIPPED:
            self._minutes.count(self._at_minute, SHIPPED)
        elif status is OrderStatus.FAILED:
            self._minutes.count(self._at_minute, FAILED)
        new = advanced(old, status, self._at_json, reason, shipment)
        old_reason = last_reason(old) if old.status is OrderStatus.FAILED else None
        self._table.replace(order_id, old, new, old_reason, reason)
        self._events.append(
            EVENT_TYPE[event], order_id, status, at, reason, shipment, notify=notify
        )
        return new

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
        written: list[bool] = []
        with self._lock:
            for outcome in outcomes:
                try:
                    self._apply(
                        outcome.order_id,
                        outcome.event,
                        outcome.at,
                        outcome.reason,
                        Hold(owner, outcome.token),
                        outcome.shipment,
                        notify=False,
                    )
                except (OrderNotFound, OrderConflict):
                    written.append(False)
                else:
                    written.append(True)
            if any(written):
                self._events.notify()
        return written

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        claim = claim_at(at)  # one for the batch
        below = None if created_before is None else order_id_floor(created_before)
        with self._lock:
            ids = self._table.take_pending(limit, below)
            rows = self._rows
            for order_id in ids:
                rows[order_id] = claimed(rows[order_id], claim)
            self._ready.extend(ids)
            self._events.extend(EventType.PROCESSING, ids, OrderStatus.PROCESSING, at)
        return len(ids)

    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        picked: list[tuple[str, Row, int]] = []
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
        return [Held(Parcel(i, json=render(row)), token) for i, row, token in picked]

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
                self._apply(order_id, Event.HANDBACK, at, lost_track(owner), None, None)
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
            return self._table.counts()

    async def oldest_pending(self) -> datetime | None:
        with self._lock:
            oldest = self._table.oldest_pending()
        return None if oldest is None else order_id_time(oldest)

    async def stats(self, top: int = 20) -> Stats:
        with self._lock:
            counts = self._table.counts()
            common = self._table.common_failures(top)
        return Stats(counts, [ReasonCount(reason, count) for reason, count in common])

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
        dry_run: bool = False,
    ) -> tuple[list[str], str | None]:
        next_status(source, event)  # raises IllegalTransition
        low = None if where.start is None else order_id_floor(where.start)
        high = None if where.end is None else order_id_floor(where.end)
        skip_low = after is not None and (low is None or after >= low)
        if skip_low:
            low = after
        moved: list[str] = []
        resume: str | None = None
        with self._lock:
            stretch = self._table.stretch(source, low, high, after=skip_low)
            for order_id in stretch:
                row = self._rows[order_id]
                if (
                    row.status is source
                    and (where.reason_contains is None or where.reason_matches(last_reason(row)))
                    and (where.customer is None or where.customer_matches(customer_key(row)))
                ):
                    if not dry_run:
                        self._apply(order_id, event, at, reason, None, None)
                    moved.append(order_id)
                    if len(moved) == limit:
                        resume = order_id
                        break
            else:
                if len(stretch) == self._table.max_walk:
                    resume = stretch[-1]
        return moved, resume

    # -- history and instances --------------------------------------------------------------

    async def order_minutes(self, since: datetime) -> list[MinuteCounts]:
        with self._lock:
            return self._minutes.since(minute_of(since))

    async def prune_minutes(self, before: datetime) -> int:
        with self._lock:
            return self._minutes.prune(minute_of(before))

    async def heartbeat(self, beat: InstanceBeat) -> None:
        with self._lock:
            self._instances.beat(beat)

    async def stop_instance(self, name: str, at: datetime) -> None:
        with self._lock:
            self._instances.stop(name, at)

    async def list_instances(self, at: datetime) -> list[Instance]:
        with self._lock:
            return self._instances.listed(at)

    async def prune_instances(self, before: datetime) -> int:
        with self._lock:
            return self._instances.prune(before)

    # -- idempotency keys --------------------------------------------------------------------

    async def find_idempotency(self, key: str) -> IdempotencyRecord | None:
        return self._keys.get(key)

    async def prune_idempotency(self, created_before: datetime) -> int:
        with self._lock:
            old = [k for k, record in self._keys.items() if record.created_at < created_before]
            for key in old:
                del self._keys[key]
        return len(old)

    # -- the event log -----------------------------------------------------------------------

    async def read_events(self, after: int, limit: int) -> list[OrderEvent]:
        return self._events.read_after(after, limit)

    async def last_event_seq(self) -> int:
        return self._events.last_seq

    def watch_events(self, on_events: Callable[[], None]) -> None:
        self._events.listener = on_events

    async def prune_events(self, before: datetime, keep: int, limit: int = 10_000) -> int:
        return self._events.prune(before, keep, limit)

    # -- snapshots, and a self-check for tests -----------------------------------------------

    @property
    def snapshots(self) -> Snapshots:
        return self

    def dump(self) -> MemoryState:
        """Everything, for a snapshot; call when nothing is being written."""
        with self._lock:
            rows = list(self._table.sorted_rows())
            keys = list(self._keys.values())
        orders = [order_of(row) for row in rows]
        return MemoryState(orders, keys, list(self._events.read(0, None)), self._events.last_seq)

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
            self._events.restore(state.events, state.last_event_seq)

    def __len__(self) -> int:
        return len(self._rows)

    def check_invariants(self) -> Iterable[str]:
        """Every disagreement between the rows, the indexes and the holds (for tests); empty
        when sound."""
        with self._lock:
            yield from self._table.check()
            processing = {
                i for i, row in self._rows.items() if row.status is OrderStatus.PROCESSING
            }
            if not set(self._holds) <= processing:
                yield "an order that is not processing is held"
            if not processing <= set(self._holds) | set(self._ready):
                yield "a processing order is neither held nor ready"
