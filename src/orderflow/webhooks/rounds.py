"""Round: the work on one claimed subscription. Read the events after its cursor, skip the
unwanted ones, POST the next wanted one, settle what became of it (each settlement checked
against the claim, extending its lease), go on until caught up, held back by a failure, or out
of time; the Deliverer then releases the claim."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from standardwebhooks import Webhook

from orderflow.clock import Clock
from orderflow.domain import OrderEvent
from orderflow.errors import Gone
from orderflow.store.base import OrderStore
from orderflow.webhooks.model import (
    Claim,
    DeliveryOutcome,
    DeliveryRecord,
    Settlement,
    message_id,
    retry_delay_s,
)
from orderflow.webhooks.schemas import Delivery
from orderflow.webhooks.sender import Answer, Sender
from orderflow.webhooks.store import WebhookStore

log = logging.getLogger("orderflow.webhooks")

_BATCH = 100  # events read at a time
_LEASE_SLACK_S = 1.0  # an attempt starts only with its timeout plus this left on the lease
_RELEASE_TIMEOUT_S = 5.0
_DISABLED_REASON = "the receiver answered 410 Gone"
_REASON_CHARS = 200  # of an unforeseen error's text, in the deliveries log
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, kw_only=True)
class RoundContext:
    """What a round needs of the deliverer that runs it: the stores, the sender, the clock,
    the retry schedule and timings (seconds), whether it is stopping, a way to be woken when a
    retry comes due, and where an unforeseen sending error is told."""

    orders: OrderStore
    store: WebhookStore
    sender: Sender
    clock: Clock
    rng: random.Random
    schedule_s: Sequence[float]
    timeout_s: float
    lease_s: float
    stopping: Callable[[], bool]
    wake_in: Callable[[float], None]
    unforeseen: Callable[[str, Exception], None]


class Round:
    """A claim being worked on: where its cursor is, and until when its lease lasts
    (monotonic)."""

    def __init__(self, context: RoundContext, claim: Claim, lease_until: float, ends_at: float):
        self.context = context
        self.orders = context.orders
        self.clock = context.clock
        self.rng = context.rng
        self.claim = claim
        self.subscription = claim.subscription
        self.cursor = claim.subscription.cursor
        self.lease_until = lease_until
        self.ends_at = ends_at
        self.signer = Webhook(claim.subscription.secret)
        self.progressed = False  # something written: another round may follow at once

    async def run(self) -> bool:
        """Deliver what is due; True if it got anywhere."""
        if not self.subscription.ordered:
            await self.retry_due()
        await self.deliver_new()
        return self.progressed or self.cursor != self.subscription.cursor

    async def release(self) -> None:
        await release_claim(self.context.store, self.claim, self.cursor)

    def over(self) -> bool:
        return self.context.stopping() or time.monotonic() >= self.ends_at

    async def retry_due(self) -> None:
        """An unordered subscription's events that failed before and are due again."""
        for retry in self.claim.retries:
            if self.over():
                return
            try:
                found = await self.orders.read_events(retry.seq - 1, 1)
            except Gone:
                found = []
            if not found or found[0].seq != retry.seq:
                record = self.record(retry.seq, retry.attempt, DeliveryOutcome.PRUNED, "pruned")
                pruned = Settlement(cursor=self.cursor, seq=retry.seq, record=record)
                if not await self.settle(pruned):
                    return
                continue
            if not await self.deliver(found[0], retry.attempt + 1, new=False):
                return

    async def deliver_new(self) -> None:
        """The events after the cursor, in seq order."""
        retries = {r.seq: r.attempt for r in self.claim.retries}  # ordered: the next one's
        while not self.over():
            try:
                events = await self.orders.read_events(self.cursor, _BATCH)
            except Gone:
                if not await self.skip_pruned(retries):
                    return
                continue
            if not events:
                return
            for event in events:
                if not self.subscription.wants(event.type):
                    self.cursor = event.seq
                    continue
                if self.over():
                    return
                attempt = retries.pop(event.seq, 0) + 1
                if not await self.deliver(event, attempt, new=True):
                    return

    async def skip_pruned(self, retries: dict[int, int]) -> bool:
        """The cursor fell behind what the log keeps: move it to the oldest event kept, record
        the gap, and forget the retry of a pruned event (an ordered one's). Binary search, as
        the log says only whether `after` is too old."""
        low, high = self.cursor, await self.orders.last_event_seq()
        while high - low > 1:
            middle = (low + high) // 2
            try:
                await self.orders.read_events(middle, 1)
                high = middle
            except Gone:
                low = middle
        log.warning(
            "webhook %s: events %d to %d were pruned from the log before they were delivered",
            self.subscription.id,
            self.cursor + 1,
            high,
        )
        error = f"events {self.cursor + 1} to {high} were pruned before they were delivered"
        record = self.record(high, 0, DeliveryOutcome.PRUNED, error)
        pruned = min((seq for seq in retries if seq <= high), default=None)
        if not await self.settle(Settlement(cursor=high, seq=pruned, record=record)):
            return False
        self.cursor = high
        for seq in [seq for seq in retries if seq <= high]:
            del retries[seq]
        return True

    async def deliver(self, event: OrderEvent, attempt: int, *, new: bool) -> bool:
        """One attempt at `event` (`new`: the next after the cursor, else a retry the cursor
        went past), and its settlement; whether the round goes on."""
        short = self.lease_until - time.monotonic() < self.context.timeout_s + _LEASE_SLACK_S
        if short and not await self.settle(Settlement(cursor=self.cursor)):
            return False  # the lease could not be extended: no attempt may outlast it
        at = self.clock.now()
        answer = await self.post(event, attempt, at)
        subscription = self.subscription
        delay_s: float | None = None
        if answer.delivered:
            outcome = DeliveryOutcome.DELIVERED
        elif answer.status_code == 410:
            outcome = DeliveryOutcome.DISABLED
        else:
            delay_s = retry_delay_s(
                self.context.schedule_s, attempt, answer.retry_after_s, self.rng
            )
            outcome = DeliveryOutcome.GIVEN_UP if delay_s is None else DeliveryOutcome.RETRYING
        passes = outcome is DeliveryOutcome.RETRYING and not subscription.ordered
        cursor = self.cursor
        if new and (outcome in (DeliveryOutcome.DELIVERED, DeliveryOutcome.GIVEN_UP) or passes):
            cursor = event.seq
        record = DeliveryRecord(
            event.seq,
            message_id(event.seq),
            attempt,
            answer.status_code,
            answer.latency_ms,
            answer.error,
            outcome,
            at,
        )
        settlement = Settlement(
            cursor=cursor,
            seq=event.seq if attempt > 1 or outcome is DeliveryOutcome.RETRYING else None,
            retry_attempt=attempt if outcome is DeliveryOutcome.RETRYING else None,
            retry_in_s=delay_s or 0.0,
            disable=_DISABLED_REASON if outcome is DeliveryOutcome.DISABLED else None,
            record=record,
        )
        if not await self.settle(settlement):
            return False
        self.cursor = cursor
        if outcome is DeliveryOutcome.RETRYING:
            assert delay_s is not None
            self.context.wake_in(delay_s)
            log.debug(
                "webhook %s: %s failed (%s)", subscription.id, record.webhook_id, answer.error
            )
        elif outcome is DeliveryOutcome.GIVEN_UP:
            log.warning(
                "webhook %s: gave up on %s after %d attempts: %s",
                subscription.id,
                record.webhook_id,
                attempt,
                answer.error,
            )
        elif outcome is DeliveryOutcome.DISABLED:
            log.warning("webhook %s disabled: %s", subscription.id, _DISABLED_REASON)
        return outcome in (DeliveryOutcome.DELIVERED, DeliveryOutcome.GIVEN_UP) or passes

    async def settle(self, settlement: Settlement) -> bool:
        sent = time.monotonic()
        if await self.context.store.settle(self.claim, settlement, self.context.lease_s):
            self.lease_until = sent + self.context.lease_s
            self.progressed |= settlement.record is not None
            return True
        log.info("webhook %s: claim lost (replayed, deleted or taken over)", self.subscription.id)
        return False

    def record(
        self, seq: int, attempt: int, outcome: DeliveryOutcome, error: str
    ) -> DeliveryRecord:
        return DeliveryRecord(
            seq, message_id(seq), attempt, None, 0.0, error, outcome, self.clock.now()
        )

    async def post(self, event: OrderEvent, attempt: int, at: datetime) -> Answer:
        """`event` sent, signed as of `at`, with the order as it is now. Raises only the order
        store's errors (an outage of the store, not of the receiver): anything that goes wrong
        in sending, foreseen or not, is a failed attempt like any other, so that one broken
        subscription is retried on its schedule and never stalls the deliverer."""
        order = await self.orders.find_order(event.order_id)
        began = time.perf_counter()
        try:
            data: Any = order if order is not None else {"id": event.order_id}
            body = _encode(Delivery(event.type, event.at, data))
            return await self.context.sender.send(
                self.subscription.url, self.signer, message_id(event.seq), body, at, attempt
            )
        except Exception as exc:
            self.context.unforeseen(self.subscription.id, exc)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            return Answer(None, f"sending failed: {reason[:_REASON_CHARS]}", _ms(began))


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


async def release_claim(store: WebhookStore, claim: Claim, cursor: int) -> None:
    """Give `claim` back with its cursor at `cursor`; never raises (if the store cannot be
    told, the claim's lease runs out instead)."""
    try:
        async with asyncio.timeout(_RELEASE_TIMEOUT_S):
            await store.release(claim, cursor)
    except Exception as exc:
        log.warning(
            "could not release webhook %s (%s); its lease will run out",
            claim.subscription.id,
            exc,
        )
