"""OrderService: what the API can ask of orderflow, over one OrderStore, the Claimer that moves
pending orders to processing, and the Processor that ships them.

Where the store answers OutcomeUnknown (the connection broke while a change was in flight),
the service looks whether the change was made before it says so: a change that committed is
reported as done, and only a truly unknown outcome reaches the client as one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta

import msgspec

from orderflow.claimer import Claimer
from orderflow.clock import Clock
from orderflow.domain import (
    Event,
    Item,
    Order,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Page,
    Stats,
    could_end_an_id,
    is_order_id,
    new_order,
    new_order_id,
    sources_of,
)
from orderflow.errors import (
    IdempotencyInFlight,
    IdempotencyMismatch,
    IllegalTransition,
    OrderflowError,
    OrderNotFound,
    OutcomeUnknown,
    ShuttingDown,
)
from orderflow.metrics import METRICS
from orderflow.processor import Processor
from orderflow.store.base import IdempotencyRecord, Instance, JsonPage, MinuteCounts, OrderStore

log = logging.getLogger("orderflow.service")

_BULK_BATCH = 1000
#: The minutes GET /orders/throughput covers, ending with the current one.
THROUGHPUT_MINUTES = 1440
#: How long minute counts are kept (the window, and an hour to spare), and how long an
#: instance is still listed after its last heartbeat (stopped, or gone silent).
MINUTES_KEPT = timedelta(hours=25)
GONE_INSTANCES_KEPT = timedelta(hours=1)
_fingerprint_encode = msgspec.json.Encoder(order="deterministic").encode


class Submitted(msgspec.Struct, frozen=True):
    """A submit's answer: the order, and whether it is the replay of an earlier submit made
    with the same Idempotency-Key."""

    order_id: str
    status: OrderStatus
    replayed: bool = False


class OrderService:
    """Args:
    idempotency_ttl_s: how long an Idempotency-Key is kept, at least.
    """

    def __init__(
        self,
        store: OrderStore,
        claimer: Claimer,
        processor: Processor,
        clock: Clock,
        *,
        idempotency_ttl_s: float = 86_400.0,
    ) -> None:
        self.store = store
        self.claimer = claimer
        self.processor = processor
        self._clock = clock
        self.idempotency_ttl_s = idempotency_ttl_s
        self._keys_in_flight: set[str] = set()
        self.stopping = False

    @property
    def auto_process(self) -> bool:
        """Whether pending orders are claimed by themselves; else they wait for a trigger
        (POST /orders/process), and the answer to a retry says so."""
        return self.claimer.auto_process

    async def start(self) -> None:
        """Start shipping, then take triggers (and, with auto-process, claim by itself)."""
        await self.processor.start()
        self.claimer.start()

    async def stop(self, grace_s: float) -> None:
        """Take no more work: stop claiming, then stop the processor (shipments in flight get
        `grace_s` seconds; see `Processor.stop`)."""
        self.stopping = True
        try:
            await self.claimer.stop()
        finally:
            await self.processor.stop(grace_s)

    async def submit(
        self, customer: str, items: tuple[Item, ...], idempotency_key: str | None = None
    ) -> Submitted:
        """Store a new pending order (`customer` and `items` already clean).

        Raises:
            IdempotencyMismatch: the key was used for a different order.
            IdempotencyInFlight: a submit with the key is still under way.
            OutcomeUnknown: the store went away mid-write and we could not tell.
        """
        if self.stopping:
            raise ShuttingDown()
        at = self._clock.now()
        order = new_order(new_order_id(at, self._clock.entropy()), customer, items, at)
        if idempotency_key is None:
            try:
                await self.store.add(order)
            except OutcomeUnknown as unknown:
                await self._confirm(unknown, self._exists(order.id))
            METRICS.submitted += 1
            self.claimer.claim_soon()
            return Submitted(order.id, order.status)
        if idempotency_key in self._keys_in_flight:
            raise IdempotencyInFlight()
        fingerprint = hashlib.sha256(_fingerprint_encode((customer, items))).hexdigest()
        record = IdempotencyRecord(idempotency_key, fingerprint, order.id, at)
        self._keys_in_flight.add(idempotency_key)
        try:
            existing = await self.store.add(order, record)
        except OutcomeUnknown as unknown:
            await self._confirm(unknown, self._key_made(record))
            existing = None
        finally:
            self._keys_in_flight.discard(idempotency_key)
        if existing is None or existing.order_id == order.id:
            METRICS.submitted += 1
            self.claimer.claim_soon()
            return Submitted(order.id, order.status)
        if existing.fingerprint != fingerprint:
            raise IdempotencyMismatch()
        return Submitted(existing.order_id, OrderStatus.PENDING, replayed=True)

    async def get_order(self, order_id: str) -> Order:
        """The order; raises OrderNotFound (without asking the store for what cannot be an
        id: a NUL, say, which PostgreSQL cannot even hold)."""
        order = await self.store.find_order(order_id) if is_order_id(order_id) else None
        if order is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        return order

    async def get_order_json(self, order_id: str) -> bytes:
        """The order as JSON; raises OrderNotFound."""
        order = await self.store.find_order_json(order_id) if is_order_id(order_id) else None
        if order is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        return order

    async def list_orders(self, query: OrderQuery) -> Page:
        """A page of orders (a reversed range [from, to) holds none, nor does a search for a
        tail no id can end with)."""
        if _finds_none(query):
            return Page([], None)
        return await self.store.list_orders(query)

    async def list_orders_json(self, query: OrderQuery) -> JsonPage:
        """The page `list_orders` answers, as JSON."""
        if _finds_none(query):
            return JsonPage(msgspec.Raw(b"[]"), 0, None)
        return await self.store.list_orders_json(query)

    async def delete_order(self, order_id: str) -> None:
        """Delete a pending order; raises OrderNotFound or IllegalTransition."""
        self._check_id(order_id)
        try:
            await self.store.delete_pending(order_id, self._clock.now())
        except OutcomeUnknown as unknown:
            await self._confirm(unknown, self._absent(order_id))
        log.debug("order_id=%s deleted", order_id)

    async def cancel_order(self, order_id: str, reason: str | None = None) -> Order:
        """Cancel a pending or processing order; a shipment in flight is cancelled after the
        store says cancelled, so a late finisher cannot overwrite it. `reason`, like every
        reason given here, is already clean (`domain.clean_reason`).

        Raises:
            OrderNotFound, IllegalTransition (shipped, failed or already cancelled).
        """
        order = await self._move(order_id, Event.CANCEL, reason)
        self.processor.abort(order_id)
        return order

    async def retry_order(self, order_id: str, reason: str | None = None) -> Order:
        """Send a failed order back to pending; raises OrderNotFound or IllegalTransition."""
        return await self._move(order_id, Event.RETRY, reason or "retried by an operator")

    async def _move(self, order_id: str, event: Event, reason: str | None) -> Order:
        self._check_id(order_id)
        at = self._clock.now()
        try:
            order = await self.store.transition(order_id, event, at, reason)
        except OutcomeUnknown as unknown:
            await self._confirm(unknown, self._moved(order_id, at))
            order = await self.store.get_order(order_id)
        log.debug("order_id=%s %s", order_id, event.value)
        return order

    async def trigger_processing(self) -> int:
        """Ship every order pending now: returns how many there are, at once; they are claimed
        in the background, slice by slice (see `Claimer`). Raises ShuttingDown."""
        if self.stopping:
            raise ShuttingDown()
        pending = await self.claimer.trigger()
        log.info("trigger: %d orders pending, claimed for shipping", pending)
        return pending

    async def act_in_bulk(
        self,
        event: Event,
        where: OrderFilter,
        reason: str | None,
        *,
        status: OrderStatus | None = None,
        dry_run: bool = False,
    ) -> int:
        """Apply `event` (retry or cancel) to every order it can move that matches `where`
        (and is in `status`, if given), in batches (each order atomically); returns how many
        moved. `dry_run`: the same walk, changing nothing; how many it would move."""
        if self.stopping and not dry_run:
            raise ShuttingDown()
        total = 0
        if where.start is not None and where.end is not None and where.start >= where.end:
            return 0  # an empty range
        for source in sources_of(event):
            if status is not None and source is not status:
                continue
            after: str | None = None
            while True:
                moved, after = await self.store.transition_matching(
                    event, source, where, self._clock.now(), reason,
                    limit=_BULK_BATCH, after=after, dry_run=dry_run,
                )  # fmt: skip
                total += len(moved)
                if event is Event.CANCEL and not dry_run:
                    for order_id in moved:
                        self.processor.abort(order_id)
                if after is None:
                    break
        log.info("bulk %s%s: %d orders", event.value, " (dry run)" if dry_run else "", total)
        return total

    async def act_on_ids(
        self, event: Event, ids: Sequence[str], reason: str | None, *, dry_run: bool = False
    ) -> int:
        """Apply `event` (retry or cancel) to each order of `ids` it can move, each atomically;
        an unknown id, or an order in a status `event` does not apply to, is skipped. Returns
        how many moved (`dry_run`: changing nothing, how many would)."""
        if self.stopping and not dry_run:
            raise ShuttingDown()
        sources = sources_of(event)
        total = 0
        for order_id in dict.fromkeys(ids):  # each once, in the order given
            if not is_order_id(order_id):
                continue
            if dry_run:
                order = await self.store.find_order(order_id)
                total += order is not None and order.status in sources
                continue
            try:
                await self._move(order_id, event, reason)
            except (OrderNotFound, IllegalTransition):
                continue
            total += 1
            if event is Event.CANCEL:
                self.processor.abort(order_id)
        log.info("bulk %s%s: %d orders", event.value, " (dry run)" if dry_run else "", total)
        return total

    async def stats(self) -> Stats:
        return await self.store.stats()

    async def ready(self) -> None:
        """Return if the service takes work: not stopping, and the store answers."""
        if self.stopping:
            raise ShuttingDown()
        await self.store.ping()

    async def throughput(self) -> tuple[datetime, datetime, list[MinuteCounts]]:
        """The first and last minute of the window (the last: the current minute), and the
        counts of its minutes with anything counted, oldest first; alike on every instance."""
        last = self._clock.now().replace(second=0, microsecond=0)
        first = last - timedelta(minutes=THROUGHPUT_MINUTES - 1)
        minutes = await self.store.order_minutes(first)
        return first, last, [m for m in minutes if m.minute <= last]

    async def instances(self) -> list[Instance]:
        """The processors sharing the store (this one among them), live ones first."""
        return await self.store.list_instances(self._clock.now())

    async def prune_history(self) -> int:
        """Forget minute counts older than `MINUTES_KEPT` and instances silent for longer
        than `GONE_INSTANCES_KEPT`; returns how many rows went."""
        now = self._clock.now()
        minutes = await self.store.prune_minutes(now - MINUTES_KEPT)
        return minutes + await self.store.prune_instances(now - GONE_INSTANCES_KEPT)

    async def prune_idempotency(self) -> int:
        before = self._clock.now() - timedelta(seconds=self.idempotency_ttl_s)
        return await self.store.prune_idempotency(before)

    # -- outcomes we could not see -------------------------------------------------------------

    @staticmethod
    async def _confirm(unknown: OutcomeUnknown, made: Awaitable[bool]) -> None:
        """Return if `made` finds that the change whose answer was lost was made; else (or if
        the store cannot tell) raise `unknown`."""
        try:
            found = await made
        except OrderflowError:
            found = False
        if not found:
            raise unknown
        log.warning("a change whose answer was lost had been made: %s", unknown)

    async def _exists(self, order_id: str) -> bool:
        return await self.store.find_order(order_id) is not None

    async def _absent(self, order_id: str) -> bool:
        return await self.store.find_order(order_id) is None

    async def _key_made(self, record: IdempotencyRecord) -> bool:
        found = await self.store.find_idempotency(record.key)
        return found is not None and found.order_id == record.order_id

    async def _moved(self, order_id: str, at: datetime) -> bool:
        order = await self.store.find_order(order_id)
        return order is not None and any(entry.at == at for entry in order.history)

    @staticmethod
    def _check_id(order_id: str) -> None:
        if not is_order_id(order_id):
            raise OrderNotFound(f"no order with id {order_id!r}")


def _finds_none(query: OrderQuery) -> bool:
    if query.id_tail is not None and not could_end_an_id(query.id_tail):
        return True
    return query.start is not None and query.end is not None and query.start > query.end
