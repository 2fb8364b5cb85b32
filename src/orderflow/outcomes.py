"""OutcomeWriter: how the processor records what became of its shipments.

Every write names the hold it is made under: the processor's current token for the order,
read when the write is made (an order acquired again while it shipped here is written under
its new hold: the work was done once, by us). A write waits out an outage of the store, so no
outcome is lost to it; after an answer was lost (OutcomeUnknown), what did go through is found
in the orders' histories and not written twice; a value the store refuses is written again
without the shipper's words.

A shipment's final outcome is handed over (`submit`) and written with the others of its batch
in one `OrderStore.write_outcomes` (at most 500): in memory, what came in while the writer
last wrote (a turn of the event loop, under load); on a shared store, what came in while the
last round trip was under way or within `window_s`. The worker does not wait: it takes its
next order, and the writer does the bookkeeping of what was written (the holdings, the
metrics, the log). A retry's note is written at once (`write`): the next attempt depends on it.
An outcome is acknowledged to nobody before its write is committed; a crash before its batch
was written repeats the shipment (the order is still processing, and is rescued), as a crash
in the middle of a shipment does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from orderflow.clock import Clock
from orderflow.domain import (
    Event,
    Outcome,
    ends_hold,
    micros_since_epoch,
    order_id_micros,
    target_of,
)
from orderflow.errors import OutcomeUnknown, StoreRefusedData, StoreUnavailable
from orderflow.metrics import METRICS
from orderflow.store.base import OrderStore
from orderflow.supervise import Backoff

log = logging.getLogger("orderflow.outcomes")

_BATCH = 500
_GIVE_UP_AFTER = 3  # tries in an outage once the processor is stopping
# What stands in for a reason the store refused even cleaned (it never should).
_REFUSED = "the store refused this outcome's reason and result"
_ABANDONED = "internal error: abandoned"

# (order id, event, reason, shipment): an outcome waiting for its write and its token.
Pending = tuple[str, Event, "str | None", "dict[str, Any] | None"]


class OutcomeWriter:
    """Args:
    owner: whose holds the outcomes are written under.
    holdings: the processor's holds, order id → token: read for each write's token, and an
        order whose hold an outcome ends leaves them once it is written.
    giving_up: when true (stopping), a write tries a few times in an outage, then gives up
        (the order is then left to `OrderStore.retire`, or to rescue).
    window_s: on a shared store, how long a batch gathers outcomes before its round trip.
    """

    def __init__(
        self,
        store: OrderStore,
        owner: str,
        clock: Clock,
        holdings: dict[str, int],
        giving_up: Callable[[], bool],
        *,
        window_s: float = 0.0,
    ) -> None:
        self._store = store
        self._owner = owner
        self._clock = clock
        self._holdings = holdings
        self._giving_up = giving_up
        self._window_s = window_s if store.shared else 0.0
        # What an unfinished order becomes when we let go of it: pending here, or ready again
        # for the other processes sharing the store.
        self._give_back = Event.HANDBACK if store.shared else Event.RELEASE
        self._backoff = Backoff(0.05, max_s=2.0)
        self._pending: list[Pending] = []
        self._queued = asyncio.Event()
        self._idle = asyncio.Event()  # nothing pending, no batch under way
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_batches(), name="orderflow-writer")

    async def close(self) -> None:
        """Write what was submitted (waiting out an outage only while not giving up), then
        stop; call when no more will be submitted."""
        if self._task is None:
            return
        if self._pending or not self._idle.is_set():
            await self._idle.wait()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    # -- handing outcomes over ---------------------------------------------------------------

    def submit(
        self,
        order_id: str,
        event: Event,
        reason: str | None = None,
        shipment: dict[str, Any] | None = None,
    ) -> None:
        """Write `event` of `order_id` (under the hold the processor has when it is written)
        with the next batch; returns at once."""
        self._pending.append((order_id, event, reason, shipment))
        if len(self._pending) == 1:
            self._idle.clear()
            self._queued.set()

    async def write(
        self,
        order_id: str,
        event: Event,
        reason: str | None = None,
        shipment: dict[str, Any] | None = None,
    ) -> bool:
        """Write `event` of `order_id` now, under the hold the processor has; True if it was
        written, False if the order is no longer held so (cancelled, rescued, taken by
        another), or if, giving up in an outage, it could not be."""
        while (token := self._holdings.get(order_id)) is not None:
            outcome = Outcome(order_id, token, event, self._clock.now(), reason, shipment)
            try:
                [written] = await self._refused_alone([outcome])
            except StoreUnavailable as exc:  # only when giving up
                log.warning("order_id=%s outcome %s not written: %s", order_id, event.value, exc)
                return False
            METRICS.transitions[event.value, "written" if written else "refused"] += 1
            if self._settled(outcome, written):
                return written
        return False

    # -- the batches --------------------------------------------------------------------------

    async def _write_batches(self) -> None:
        while True:
            await self._queued.wait()
            if self._window_s:
                await asyncio.sleep(self._window_s)
            self._queued.clear()
            while self._pending:
                batch = self._pending[:_BATCH]
                del self._pending[:_BATCH]
                try:
                    await self._write_batch(batch)
                except Exception:  # a bug: the writer outlives it, and no order is left stuck
                    log.exception("writing %d outcomes failed", len(batch))
                    self._abandon(batch)
            if not self._pending:
                self._idle.set()

    async def _write_batch(self, batch: list[Pending]) -> None:
        at = self._clock.now()  # the batch's time: each history entry it writes
        holdings = self._holdings
        outcomes = []
        for order_id, event, reason, shipment in batch:
            token = holdings.get(order_id)
            if token is None:  # cancelled or taken away meanwhile: not ours to write
                log.debug("order_id=%s outcome %s dropped: no longer ours", order_id, event.value)
            else:
                outcomes.append(Outcome(order_id, token, event, at, reason, shipment))
        if not outcomes:
            return
        try:
            written = await self._refused_alone(outcomes)
        except StoreUnavailable as exc:  # only when giving up: left to retire, or to rescue
            for outcome in outcomes:
                log.warning(
                    "order_id=%s outcome %s not written: %s",
                    outcome.order_id,
                    outcome.event.value,
                    exc,
                )
            return
        again: list[Pending] = []
        shipped: list[str] = []
        counts: dict[tuple[str, str], int] = {}
        for outcome, done in zip(outcomes, written, strict=True):
            key = (outcome.event.value, "written" if done else "refused")
            counts[key] = counts.get(key, 0) + 1
            if not done or outcome.event is not Event.SHIP:
                if not self._settled(outcome, done):  # held again meanwhile: write it again
                    again.append(
                        (outcome.order_id, outcome.event, outcome.reason, outcome.shipment)
                    )
            elif holdings.get(outcome.order_id) == outcome.token:  # the usual case, inline
                del holdings[outcome.order_id]
                shipped.append(outcome.order_id)
            else:
                shipped.append(outcome.order_id)
        METRICS.transitions.update(counts)
        if shipped:  # how long each took from its submit, to the batch's time
            at_micros = micros_since_epoch(at)
            observe = METRICS.submit_to_shipped_seconds.observe
            for order_id in shipped:
                observe(max(0.0, (at_micros - order_id_micros(order_id)) / 1e6))
        self._pending += again

    def _abandon(self, batch: list[Pending]) -> None:
        """Give back the orders of a batch that a bug kept from being written (once: a give-back
        that fails so too is left to `OrderStore.retire`, or to rescue)."""
        for order_id, event, _, _ in batch:
            if event is not self._give_back:
                self._pending.append((order_id, self._give_back, _ABANDONED, None))

    def _settled(self, outcome: Outcome, written: bool) -> bool:
        """The bookkeeping of a write (but for the transitions counted); False when it must be
        made again under the order's new hold (it was acquired again meanwhile)."""
        order_id, event = outcome.order_id, outcome.event
        current = self._holdings.get(order_id)
        if not written:
            if current not in (None, outcome.token):
                return False
            if current is not None:
                del self._holdings[order_id]
            log.debug("order_id=%s outcome %s dropped: no longer ours", order_id, event.value)
            return True
        if current == outcome.token and ends_hold(event):
            del self._holdings[order_id]
        if event is Event.SHIP:
            lead_s = (micros_since_epoch(outcome.at) - order_id_micros(order_id)) / 1e6
            METRICS.submit_to_shipped_seconds.observe(max(0.0, lead_s))
        elif event is Event.FAIL:
            log.warning("order_id=%s failed: %s", order_id, outcome.reason)
        return True

    # -- one write, patiently ------------------------------------------------------------------

    async def _refused_alone(self, outcomes: list[Outcome]) -> list[bool]:
        """`_patiently`; when the store refuses the data of a batch, each outcome is written on
        its own, and one it still refuses is written without its reason and result."""
        try:
            return await self._patiently(outcomes)
        except StoreRefusedData as exc:  # no write of the batch went through
            if len(outcomes) > 1:
                return [written for one in outcomes for written in await self._refused_alone([one])]
            [outcome] = outcomes
            if outcome.reason is None and outcome.shipment is None:
                raise
            log.error(
                "order_id=%s the store refused outcome %s; writing it without its reason and"
                " result", outcome.order_id, outcome.event.value, exc_info=exc,
            )  # fmt: skip
            bare = msgspec.structs.replace(
                outcome, reason=None if outcome.reason is None else _REFUSED, shipment=None
            )
            return await self._patiently([bare])

    async def _patiently(self, outcomes: list[Outcome]) -> list[bool]:
        """Write `outcomes`, waiting out an outage. After an answer was lost (OutcomeUnknown),
        what did go through is found in the orders' histories and not written twice."""
        try:  # the usual case: one call
            return await self._store.write_outcomes(self._owner, outcomes)
        except StoreUnavailable as exc:
            failure, unknown = exc, isinstance(exc, OutcomeUnknown)
        results = [False] * len(outcomes)
        todo = list(range(len(outcomes)))
        for attempt in range(1, 1_000_000):
            if self._giving_up() and attempt >= _GIVE_UP_AFTER:
                raise failure
            await asyncio.sleep(self._backoff.delay_s(attempt))
            try:
                if unknown:
                    for i in list(todo):
                        if await self._written_before(outcomes[i]):
                            results[i] = True
                            todo.remove(i)
                    if not todo:
                        return results
                written = await self._store.write_outcomes(self._owner, [outcomes[i] for i in todo])
            except StoreUnavailable as exc:
                failure, unknown = exc, unknown or isinstance(exc, OutcomeUnknown)
                continue
            for i, done in zip(todo, written, strict=True):
                results[i] = done
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    async def _written_before(self, outcome: Outcome) -> bool:
        order = await self._store.find_order(outcome.order_id)
        if order is None:
            return False
        target = target_of(outcome.event)
        return any(entry.at == outcome.at and entry.status is target for entry in order.history)
