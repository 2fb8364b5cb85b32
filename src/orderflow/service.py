"""OrderService: what the API can ask of orderflow, over one OrderStore and one Processor."""

from __future__ import annotations

import logging

from orderflow.clock import Clock
from orderflow.domain import (
    Event,
    Item,
    Order,
    OrderQuery,
    OrderStatus,
    Page,
    clean_customer,
    new_order,
    new_order_id,
)
from orderflow.errors import InvalidOrder
from orderflow.processor import Processor
from orderflow.store.base import OrderStore

log = logging.getLogger("orderflow.service")

MAX_PAGE = 1000


class OrderService:
    """Args:
    auto_process: claim each new order for shipping as it arrives, instead of on a trigger.
    """

    def __init__(
        self, store: OrderStore, processor: Processor, clock: Clock, *, auto_process: bool = False
    ) -> None:
        self.store = store
        self.processor = processor
        self._clock = clock
        self._auto_process = auto_process

    async def submit(self, customer: str, items: tuple[Item, ...]) -> Order:
        """Store a new pending order; raises InvalidOrder for a blank or overlong customer."""
        try:
            customer = clean_customer(customer)
        except ValueError as exc:
            raise InvalidOrder(str(exc)) from None
        at = self._clock.now()
        order = new_order(new_order_id(at, self._clock.entropy()), customer, items, at)
        await self.store.add(order)
        log.info("order_id=%s submitted items=%d", order.id, len(items))
        if self._auto_process:
            self.processor.claim_soon()
        return order

    async def get_order(self, order_id: str) -> Order:
        return await self.store.get_order(order_id)

    async def list_orders(self, query: OrderQuery) -> Page:
        """A page of orders; raises InvalidOrder for a reversed range or a bad limit."""
        if query.start is not None and query.end is not None and query.start > query.end:
            raise InvalidOrder("'from' must not be after 'to'")
        if not 1 <= query.limit <= MAX_PAGE:
            raise InvalidOrder(f"'limit' must be between 1 and {MAX_PAGE}")
        return await self.store.list_orders(query)

    async def delete_order(self, order_id: str) -> None:
        """Delete a pending order; raises OrderNotFound or OrderConflict."""
        await self.store.delete_pending(order_id)
        log.info("order_id=%s deleted", order_id)

    async def cancel_order(self, order_id: str) -> Order:
        """Cancel a pending or processing order; a shipment in flight is cancelled after the
        store says cancelled, so a late finisher cannot overwrite it.

        Raises:
            OrderNotFound, IllegalTransition (shipped, failed or already cancelled).
        """
        order = await self.store.transition(order_id, Event.CANCEL, self._clock.now())
        self.processor.abort(order_id)
        log.info("order_id=%s cancelled", order_id)
        return order

    async def trigger_processing(self) -> int:
        """Claim every pending order for shipping; returns how many. Raises ShuttingDown."""
        return await self.processor.trigger()

    async def counts(self) -> dict[OrderStatus, int]:
        return await self.store.count_by_status()
