"""OrderStore: the contract every backend keeps; the conformance suite checks it.

Each method is atomic on its own. Shared rules (the state machine, ids, validation) live in the
domain and the service, so a backend only stores and finds.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from datetime import datetime

from orderflow.domain import Event, Order, OrderQuery, OrderStatus, Page
from orderflow.errors import OrderConflict, OrderNotFound


class OrderStore(abc.ABC):
    #: Whether other processes share this store: a stopping processor then hands its orders
    #: back for them (handback) instead of putting them back to pending (release).
    shared = False

    @abc.abstractmethod
    async def add(self, order: Order) -> None:
        """Store a new order, in whatever status it is. Its id must encode its timestamp, as
        `domain.new_order_id` makes it (stores answer time ranges with id ranges); orders from
        outside (a snapshot) are checked where they come in.

        Raises:
            OrderConflict: an order with that id exists (ids are never reused).
        """

    @abc.abstractmethod
    async def find_order(self, order_id: str) -> Order | None:
        """The order, or None if there is none with that id."""

    async def get_order(self, order_id: str) -> Order:
        """The order; raises OrderNotFound."""
        order = await self.find_order(order_id)
        if order is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        return order

    @abc.abstractmethod
    async def list_orders(self, query: OrderQuery) -> Page:
        """Orders with `query.start <= timestamp < query.end` (either bound optional), and
        `status` if given, sorted by (timestamp, id), at most `query.limit` of them, strictly
        after the id `query.cursor`. `next_cursor` is set when more may follow; a page may then
        hold fewer than `query.limit` orders (even none), and the next one goes on. Costs an
        index lookup plus the page (or a bounded stretch of it), never a scan of every order.
        """

    @abc.abstractmethod
    async def delete_pending(self, order_id: str) -> None:
        """Delete the order if, and only if, it is pending, in one atomic step.

        Raises:
            OrderNotFound: no such order.
            OrderConflict: the order is not pending.
        """

    @abc.abstractmethod
    async def transition(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None = None,
        *,
        owner: str | None = None,
    ) -> Order:
        """Apply `event` to the order as it is now (compare-and-set against its current
        status), append the history entry, and return the new order. With `owner`, the order
        must also still be held by that owner (see `acquire`), so a late finisher can never
        overwrite a cancel or someone else's work. Leaving processing, or a handback, ends the
        hold; a handback makes the order ready again.

        Raises:
            OrderNotFound: no such order.
            IllegalTransition: the state machine refuses `event` from the current status.
            OrderConflict: `owner` no longer holds the order.
        """

    async def transition_many(
        self, owner: str, changes: list[tuple[str, Event, datetime, str | None]]
    ) -> list[Order | None]:
        """`transition(order_id, event, at, reason, owner=owner)` for each change, in one round
        trip where the backend can; None where the order was not (or no longer) the owner's to
        move. Each change is atomic on its own.

        Raises:
            StoreUnavailable: the store cannot be reached (then nothing is known to be written).
        """
        results: list[Order | None] = []
        for order_id, event, at, reason in changes:
            try:
                results.append(await self.transition(order_id, event, at, reason, owner=owner))
            except (OrderNotFound, OrderConflict):
                results.append(None)
        return results

    @abc.abstractmethod
    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        """Move up to `limit` pending orders (oldest first; only those created before
        `created_before` if given) to processing at `at`, in one atomic step; returns how many.
        They are then ready: processing, held by nobody, waiting for `acquire`.
        """

    @abc.abstractmethod
    async def acquire(self, owner: str, limit: int) -> list[Order]:
        """Hand up to `limit` ready orders (roughly the oldest first) to `owner` to ship.

        Atomic: no order is ever held by two owners, nor handed out twice while held.
        """

    @abc.abstractmethod
    async def count_by_status(self) -> dict[OrderStatus, int]:
        """How many orders are in each status (statuses with none may be left out)."""

    # -- sharing work between processes ------------------------------------------------------
    # A store that several processes share overrides these; in one process they have nothing
    # to do. The processor calls `heartbeat` every heartbeat interval and `rescue_orphans` as
    # often; see the README for how the timers relate.

    async def heartbeat(self, owner: str, lease_s: float) -> None:  # noqa: B027 - optional
        """Record that `owner` is alive, and extend the hold on every order it holds to
        `lease_s` seconds from now."""

    async def rescue_orphans(self, at: datetime) -> int:
        """Make ready again every processing order whose holder's lease ran out (it stopped
        heartbeating), with a history entry at `at` saying so; returns how many. Safe to call
        from many processes at once: each order is rescued once."""
        return 0

    async def release_unshared(self, at: datetime, reason: str) -> int:
        """Put every ready order (claimed, held by nobody) back to pending, if no other process
        could ship it; returns how many. A shared store keeps them ready for the others."""
        return 0

    async def retire(self, owner: str, at: datetime) -> None:  # noqa: B027 - optional
        """`owner` is stopping for good at `at`: whatever it still holds is handed back (a
        clean stop handed everything back already)."""

    async def subscribe(  # noqa: B027 - optional
        self, on_ready: Callable[[], object], on_cancel: Callable[[str], object]
    ) -> None:
        """Call `on_ready()` when another process may have made orders ready, and
        `on_cancel(order_id)` when an order may have been cancelled by another process, or
        taken from this one (its lease ran out), so that its shipment here stops; until `close`.
        Either may come more than once, or for an order this process does not hold."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections and the like; the store is unusable afterwards."""
