"""OrderStore: the contract every backend keeps; the conformance suite checks it.

Each method is atomic on its own. Shared rules (the state machine, ids, validation) live in the
domain and the service, so a backend only stores and finds. Every change to an order appends
its event to the store's event log in the same atomic step.

Holding orders. A trigger *claims* pending orders (pending → processing): they are then *ready*,
processing and held by nobody. A processor *acquires* ready orders: each becomes held by it under
a `Hold` (owner, token), the token growing with every acquisition. Only the holder, under its
current token, can write the order's outcome. Four words say how a hold ends without one:

- release:  a one-process store at shutdown puts unfinished orders back to pending;
- handback: the holder lets go of an order (shutdown of a shared store, or an order it did not
            know it held): ready again at once, for any processor;
- rescue:   the store takes back the orders of a holder whose lease ran out (it stopped
            renewing): ready again, and the old holder's writes are refused;
- retire:   a stopping holder hands back whatever it still holds (the safety net of a stop).

Outages. A backend that can be unreachable says so itself, once when an outage starts and once
when it ends (`supervise.StoreOutage`); the loops and requests that meet the outage meanwhile
raise StoreUnavailable and add no WARNING of their own.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

import msgspec

from orderflow.domain import (
    Event,
    Held,
    Hold,
    Order,
    OrderEvent,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    Page,
    Stats,
    Timestamp,
)
from orderflow.errors import OrderNotFound


class IdempotencyRecord(msgspec.Struct, frozen=True, gc=False):
    """A submit made with an Idempotency-Key: which order it created, for which request."""

    key: str
    fingerprint: str
    order_id: str
    created_at: datetime


class MemoryState(msgspec.Struct, frozen=True):
    """Everything a store in memory keeps, as a snapshot writes it and loads it back."""

    orders: list[Order]
    idempotency: list[IdempotencyRecord]
    events: list[OrderEvent]
    last_event_seq: int


class Snapshots(Protocol):
    """What a store that keeps its orders in this process only gives, so that they outlive a
    planned restart (`snapshot.SnapshotFile`)."""

    def dump(self) -> MemoryState:
        """Everything, for a snapshot; call when nothing is being written."""

    def load(self, state: MemoryState, on_order: Callable[[Order], Order] | None = None) -> None:
        """Add everything in `state` to this empty store; `on_order` may change each order on
        the way in. Raises OrderConflict when the store is not empty."""


class MinuteCounts(msgspec.Struct, frozen=True, gc=False):
    """How many orders were submitted, shipped and failed in one minute (`minute`: its start,
    UTC)."""

    minute: Timestamp
    submitted: int
    shipped: int
    failed: int


class InstanceBeat(msgspec.Struct, frozen=True, gc=False):
    """A processor's heartbeat: its name, when it started, the time of the beat, what it holds
    and ships now, and until when it counts as live without another beat."""

    name: str
    started_at: Timestamp
    at: datetime
    held: int
    in_flight: int
    live_until: datetime


class Instance(msgspec.Struct, frozen=True, gc=False):
    """A processor as the store last heard of it; `live`: it beat recently and did not stop."""

    name: str
    started_at: Timestamp
    last_heartbeat: Timestamp
    held: int
    in_flight: int
    live: bool


def live_first(instances: list[Instance]) -> list[Instance]:
    """`instances` in the order `OrderStore.list_instances` answers: live first, then by name."""
    return sorted(instances, key=lambda i: (not i.live, i.name))


class JsonPage(msgspec.Struct, frozen=True, gc=False):
    """A page of orders as JSON: `orders` is the JSON array of the orders, each written as
    `msgspec.json.encode` writes an `Order`; `count` of them."""

    orders: msgspec.Raw
    count: int
    next_cursor: str | None


_encode = msgspec.json.Encoder().encode


class OrderStore(abc.ABC):
    #: Whether other processes share this store: a stopping processor then hands its orders
    #: back for them (handback) instead of putting them back to pending (release).
    shared = False

    @property
    def snapshots(self) -> Snapshots | None:
        """The store's snapshots, if it keeps its orders in this process only (None: it keeps
        them itself, and `--snapshot` is refused)."""
        return None

    # -- orders ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def add(
        self, order: Order, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        """Store a new order, in whatever status it is. Its id must encode its timestamp, as
        `domain.new_order_id` makes it (stores answer time ranges with id ranges).

        With `idempotency`, the record is kept with the order, atomically: if a record with
        that key exists already, nothing is stored and the existing record is returned.
        Returns None when the order was stored.

        Raises:
            OrderConflict: an order with that id exists (ids are never reused).
        """

    @abc.abstractmethod
    async def find_order(self, order_id: str) -> Order | None:
        """The order, or None if there is none with that id."""

    async def find_order_json(self, order_id: str) -> bytes | None:
        """The order as JSON (as `msgspec.json.encode` writes it), or None."""
        order = await self.find_order(order_id)
        return None if order is None else _encode(order)

    async def get_order(self, order_id: str) -> Order:
        """The order; raises OrderNotFound."""
        order = await self.find_order(order_id)
        if order is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        return order

    @abc.abstractmethod
    async def list_orders(self, query: OrderQuery) -> Page:
        """Orders with `query.start <= timestamp < query.end` (either bound optional), and
        `status`, `customer` (a prefix of their customer's search key) and `id_tail` if given,
        sorted by (timestamp, id) (`newest`: the other way round), at most `query.limit` of
        them, strictly after the id `query.cursor` in that order. `next_cursor` is set when
        more may follow; a page may then hold fewer than `query.limit` orders (even none), and
        the next one goes on. Costs an index lookup plus the page (or a bounded stretch of it),
        never a scan of every order.
        """

    async def list_orders_json(self, query: OrderQuery) -> JsonPage:
        """The page `list_orders` answers, as JSON (what the API sends as it is). A backend
        that keeps its orders as JSON writes it without building the orders."""
        page = await self.list_orders(query)
        orders = page.orders
        return JsonPage(msgspec.Raw(_encode(orders)), len(orders), page.next_cursor)

    @abc.abstractmethod
    async def delete_pending(self, order_id: str, at: datetime) -> None:
        """Delete the order if, and only if, it is pending, in one atomic step.

        Raises:
            OrderNotFound: no such order.
            IllegalTransition: the order is not pending.
        """

    @abc.abstractmethod
    async def transition(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None = None,
        *,
        hold: Hold | None = None,
    ) -> Order:
        """Apply `event` to the order as it is now (compare-and-set against its current
        status), append the history entry, and return the new order. With `hold`, the order
        must still be held under that very hold, so a late or stale holder can never overwrite
        a cancel, a rescue or someone else's work. Every event but a reattempt ends the hold; a
        handback makes the order ready again.

        Raises:
            OrderNotFound: no such order.
            IllegalTransition: the state machine refuses `event` from the current status.
            NotHeld: `hold` is not (or no longer) the order's hold.
        """

    @abc.abstractmethod
    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
        """Apply each outcome of orders `owner` holds (each checked against (owner, its
        token)), in one round trip where the backend can; True where it was written, False
        where the order was not (or no longer) held so. Each is atomic on its own.

        Raises:
            StoreUnavailable: nothing is known to be written (OutcomeUnknown: some may be).
            StoreRefusedData: a value of one of them cannot be stored; none was written.
        """

    @abc.abstractmethod
    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        """Move up to `limit` pending orders (oldest first; only those created before
        `created_before` if given) to processing at `at`, in one atomic step; returns how many.
        They are then ready: processing, held by nobody, waiting for `acquire`.
        """

    @abc.abstractmethod
    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        """Hand up to `limit` ready orders (roughly the oldest first) to `owner`, each under a
        new token, with a lease of `lease_s` seconds.

        Atomic: no order is ever held by two owners, nor handed out twice while held.
        """

    @abc.abstractmethod
    async def renew(
        self, owner: str, holds: Mapping[str, int], lease_s: float, at: datetime
    ) -> set[str]:
        """Extend to `lease_s` seconds from now the lease of each order `owner` holds under
        the token `holds` gives for it, and hand back (ready again, at `at`) every order held
        by `owner` that is not in `holds` under its token: `owner` does not know it holds it
        (an acquire whose answer was lost). Returns the ids in `holds` that `owner` no longer
        holds under that token (finished, cancelled, rescued or taken by another)."""

    @abc.abstractmethod
    async def count_by_status(self) -> dict[OrderStatus, int]:
        """How many orders are in each status (every status, zeros included); cheap: kept by
        the store as orders move, never counted by a scan."""

    @abc.abstractmethod
    async def oldest_pending(self) -> datetime | None:
        """When the oldest pending order was created (None: none is pending); an index
        lookup."""

    @abc.abstractmethod
    async def stats(self, top: int = 20) -> Stats:
        """Orders by status, and the `top` most frequent reasons among failed orders (the most
        frequent first); as cheap as `count_by_status`."""

    @abc.abstractmethod
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
        """Apply `event` (an operator's retry or cancel) to up to `limit` orders in `source`
        status that match `where`, oldest first, after the id `after`, each atomically (an
        order moved meanwhile by someone else is skipped; a cancel ends any hold). Returns the
        ids moved, and where to go on (None: nothing left). A batch looks at a bounded stretch
        of orders, so it may move none and still say to go on. `dry_run`: the same walk,
        changing nothing; the ids are those it would have moved."""

    # -- history and instances --------------------------------------------------------------
    # Orders submitted, shipped and failed are counted by the minute of their event, in the
    # step that makes the change (or, on PostgreSQL, as its events are numbered): reading them
    # is a few rows, never a scan of the orders.

    @abc.abstractmethod
    async def order_minutes(self, since: datetime) -> list[MinuteCounts]:
        """The counts of every minute from the one holding `since` on, oldest first; minutes
        with nothing counted are left out. Each change is counted once, in the minute of its
        `at`, by every instance sharing the store alike."""

    @abc.abstractmethod
    async def prune_minutes(self, before: datetime) -> int:
        """Forget the counts of the minutes that ended before `before`; returns how many."""

    @abc.abstractmethod
    async def heartbeat(self, beat: InstanceBeat) -> None:
        """Record `beat`: the instance registers with its first one, and is live again after
        any (a stop is undone by a later beat)."""

    @abc.abstractmethod
    async def stop_instance(self, name: str, at: datetime) -> None:
        """`name` stopped cleanly at `at`: no longer live (nothing if it is unknown)."""

    @abc.abstractmethod
    async def list_instances(self, at: datetime) -> list[Instance]:
        """Every instance kept, live ones first (live at `at`: not stopped, and its last beat's
        `live_until` after `at`), then by name."""

    @abc.abstractmethod
    async def prune_instances(self, before: datetime) -> int:
        """Forget the instances not heard from since before `before` (live ones beat far more
        often); returns how many."""

    # -- idempotency keys --------------------------------------------------------------------

    @abc.abstractmethod
    async def find_idempotency(self, key: str) -> IdempotencyRecord | None:
        """The record of a submit made with `key`, if it is still kept."""

    @abc.abstractmethod
    async def prune_idempotency(self, created_before: datetime) -> int:
        """Forget the keys recorded before `created_before`; returns how many."""

    # -- the event log -----------------------------------------------------------------------

    @abc.abstractmethod
    async def read_events(self, after: int, limit: int) -> list[OrderEvent]:
        """Events with seq > `after`, oldest first, at most `limit`: every event of a change
        that was made, none of one that was not, each once, in seq order.

        Raises:
            EventsPruned: events after `after` were pruned already (it names the oldest kept).
        """

    @abc.abstractmethod
    async def last_event_seq(self) -> int:
        """The seq of the newest event readable now (0 when there is none)."""

    @abc.abstractmethod
    async def prune_events(self, before: datetime, keep: int, limit: int = 10_000) -> int:
        """Drop up to `limit` of the oldest events: those dated before `before`, and those
        beyond the newest `keep`; returns how many."""

    async def sequence_events(self) -> int:
        """Make the events of changes that completed readable now (a shared store numbers them
        once their transactions are over, by itself while they are watched); returns how many,
        or -1 when another process is at it right now (try again shortly)."""
        return 0

    @abc.abstractmethod
    def watch_events(self, on_events: Callable[[], None]) -> None:
        """Call `on_events()` (from any thread, often) when new events may be readable."""

    # -- sharing work between processes ------------------------------------------------------
    # A store that several processes share overrides these; in one process they have little
    # to do. See the README for how the timers relate.

    async def rescue_expired(self, at: datetime) -> int:
        """Make ready again every processing order whose holder's lease ran out, with a
        history entry at `at` saying so; returns how many. Safe to call from many processes at
        once: each order is rescued once."""
        return 0

    async def release_unshared(self, at: datetime, reason: str) -> int:
        """Put every ready order (claimed, held by nobody) back to pending, if no other process
        could ship it; returns how many. A shared store keeps them ready for the others."""
        return 0

    @abc.abstractmethod
    async def retire(self, owner: str, at: datetime) -> int:
        """`owner` is stopping for good at `at`: whatever it still holds is handed back (a
        clean stop handed everything back already); returns how many."""

    async def subscribe(  # noqa: B027 - optional
        self, on_ready: Callable[[], object], on_cancel: Callable[[str], object]
    ) -> None:
        """Call `on_ready()` when another process may have made orders ready, and
        `on_cancel(order_id)` when another process cancelled an order, so that its shipment
        here stops; until `close`. Either may come more than once, or for an order this
        process does not hold."""

    async def ping(self) -> None:  # noqa: B027 - a store in memory always answers
        """Return once the store answers; raises StoreUnavailable."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections and the like; the store is unusable afterwards."""
