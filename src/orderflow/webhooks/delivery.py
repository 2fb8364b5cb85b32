"""Deliverer: sends the event log to webhook subscriptions, signed per the Standard Webhooks
specification, at least once and, per subscription, in seq order.

Every instance runs one. It claims due subscriptions one at a time (at most `concurrency` held
at once) and runs a *round* on each: read the events after the cursor, skip the unwanted ones,
POST the next wanted one, settle what became of it, go on:

    2xx                           delivered: the cursor moves past it
    410                           the subscription is disabled (the cursor stays before it)
    anything else, a timeout,     tried again after the schedule's next wait (give or take
    no answer, a redirect         10%, at least the receiver's Retry-After up to 1 h); an
                                  ordered subscription waits for it, an unordered one goes on
                                  past it. Once the schedule is spent the event is given up.

until it is caught up, a failure holds it back, or the round's time is up; then it releases
the claim. Each settlement is checked against the claim and extends its lease, and an attempt
starts only while the lease outlasts the attempt's timeout: one attempt per subscription is in
flight, across every instance. A deliverer that dies leaves its lease to run out; the event it
was sending is sent again (same ``webhook-id``) by whoever claims the subscription next.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from standardwebhooks import Webhook

from orderflow.clock import Clock, SystemClock
from orderflow.domain import EventType, OrderEvent
from orderflow.errors import Gone
from orderflow.processor import new_owner_id
from orderflow.settings import DEFAULTS, Settings, listed
from orderflow.store.base import OrderStore
from orderflow.supervise import OutageLog, supervised
from orderflow.webhooks.model import (
    Claim,
    DeliveryRecord,
    Outcome,
    Settlement,
    Subscription,
    check_secret,
    check_url,
    message_id,
    new_secret,
    new_webhook_id,
    parse_schedule,
    retry_delay_s,
)
from orderflow.webhooks.schemas import Delivery
from orderflow.webhooks.sender import Answer, Sender
from orderflow.webhooks.store import WebhookStore

log = logging.getLogger("orderflow.webhooks")

_BATCH = 100  # events read at a time
_ROUND_S = 2.0  # a round ends after this, so that other subscriptions and instances get turns
_LEASE_SLACK_S = 1.0  # an attempt starts only with its timeout plus this left on the lease
_RELEASE_TIMEOUT_S = 5.0
_DISABLED_REASON = "the receiver answered 410 Gone"
#: The Standard Webhooks schedule: retries after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h.
DEFAULT_SCHEDULE_S = parse_schedule(DEFAULTS.webhook_retry_schedule)

_encode = msgspec.json.Encoder().encode


class _Round:
    """A claim being worked on: where it is, and until when its lease lasts (monotonic)."""

    def __init__(self, claim: Claim, lease_until: float, ends_at: float) -> None:
        self.claim = claim
        self.subscription = claim.subscription
        self.cursor = claim.subscription.cursor
        self.lease_until = lease_until
        self.ends_at = ends_at
        self.signer: Webhook | None = None
        self.progressed = False  # something written: another round may follow at once


class Deliverer:
    """Delivers the events of `orders`' log to the subscriptions in `store`.

    Args:
        schedule_s: the waits before each retry of an event (the last spent: give up).
        timeout_s: the most one attempt may take, connecting included.
        concurrency: the most subscriptions this instance delivers to at once.
        poll_s: how often to look for due subscriptions nobody announced (another instance's).
        lease_s: how long a claim lasts without a write (default: `timeout_s` + 15 s); another
            instance takes over a dead one's subscriptions after it.
        subscribe: URLs to subscribe (to every event, ordered) at start, unless a subscription
            to that URL exists; signed with `secret`.
        client: an aiohttp session to send through (stays the caller's); by default one of its
            own, opened on the first delivery and closed by `stop`.

    Raises:
        ValueError: a message naming what is wrong (a URL, the secret, a number).
    """

    def __init__(
        self,
        orders: OrderStore,
        store: WebhookStore,
        *,
        schedule_s: Sequence[float] = DEFAULT_SCHEDULE_S,
        timeout_s: float = 10.0,
        concurrency: int = 16,
        poll_s: float = 1.0,
        lease_s: float | None = None,
        subscribe: Sequence[str] = (),
        secret: str | None = None,
        owner: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        client: aiohttp.ClientSession | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("the webhook concurrency must be at least 1")
        for url in subscribe:
            check_url(url)
        if subscribe and secret is None:
            raise ValueError("a secret is needed to sign the calls of subscriptions made at start")
        self.store = store
        self._orders = orders
        self.schedule_s = tuple(schedule_s)
        self.sender = Sender(timeout_s=timeout_s, client=client)
        self.timeout_s = timeout_s
        self.lease_s = lease_s if lease_s is not None else timeout_s + 15.0
        self._concurrency = concurrency
        self._poll_s = poll_s
        self._subscribe = tuple(subscribe)
        self._secret = None if secret is None else check_secret(secret)
        self.owner = owner or new_owner_id()
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._claims = 0
        self._rounds: set[asyncio.Task[bool]] = set()
        self._releases: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._due: list[float] = []  # loop times at which retries this instance set come due
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._round_log = OutageLog(log, "delivering webhooks")

    @classmethod
    def from_settings(
        cls, settings: Settings, orders: OrderStore, store: WebhookStore
    ) -> Deliverer:
        """A deliverer configured by the --webhook* flags. Raises ValueError naming the flag."""
        try:
            schedule = parse_schedule(settings.webhook_retry_schedule)
        except ValueError as exc:
            raise ValueError(f"--webhook-retry-schedule: {exc}") from None
        urls = listed(settings.webhook)
        try:
            for url in urls:
                check_url(url)
        except ValueError as exc:
            raise ValueError(f"--webhook: {str(exc).removeprefix('url: ')}") from None
        if urls and not settings.webhook_secret:
            raise ValueError("--webhook-secret (a whsec_ key) is needed to sign the calls")
        if settings.webhook_secret:
            try:
                check_secret(settings.webhook_secret)
            except ValueError as exc:
                raise ValueError(f"--webhook-secret: {str(exc).removeprefix('secret: ')}") from None
        return cls(
            orders,
            store,
            schedule_s=schedule,
            timeout_s=settings.webhook_timeout,
            poll_s=settings.poll_interval,
            lease_s=settings.webhook_timeout + settings.lease_timeout,
            subscribe=urls,
            secret=settings.webhook_secret,
        )

    # -- what the API asks -------------------------------------------------------------------

    async def subscribe(
        self,
        url: str,
        types: Sequence[EventType] = (),
        secret: str | None = None,
        ordered: bool = True,
    ) -> Subscription:
        """A new subscription to the events from now on; `secret` generated when None.
        Raises ValueError "url: …" or "secret: …"."""
        check_url(url)
        head = await self._orders.last_event_seq()
        subscription = Subscription(
            new_webhook_id(),
            url,
            tuple(dict.fromkeys(types)),
            new_secret() if secret is None else check_secret(secret),
            ordered,
            self._clock.now(),
            head,
        )
        await self.store.add(subscription)
        log.info("webhook %s subscribed: %s", subscription.id, _where(url))
        return subscription

    async def replay(self, webhook_id: str, after_seq: int | None) -> Subscription:
        """Deliver the events after `after_seq` again (None: resume from the cursor), with
        backoff cleared and the subscription enabled again; a seq beyond the newest event
        means from the newest on. Raises WebhookNotFound, and Gone when the events after
        `after_seq` were pruned from the log."""
        await self.store.get(webhook_id)
        if after_seq is not None:
            after_seq = min(after_seq, await self._orders.last_event_seq())
            await self._orders.read_events(after_seq, 1)  # raises Gone
        subscription = await self.store.replay(webhook_id, after_seq)
        self.wake()
        return subscription

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        """Make the subscriptions asked for at start (if missing), then deliver until `stop`."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        for url in self._subscribe:
            await self._subscribe_at_start(url)
        self._task = asyncio.create_task(
            supervised(
                self._fill,
                every_s=self._poll_s,
                log=OutageLog(log, "claiming webhook subscriptions"),
                wake=self._wake,
            ),
            name="orderflow-webhooks",
        )

    async def _subscribe_at_start(self, url: str) -> None:
        assert self._secret is not None
        head = await self._orders.last_event_seq()
        wanted = Subscription(
            new_webhook_id(), url, (), self._secret, True, self._clock.now(), head
        )
        subscription, added = await self.store.ensure(wanted)
        if added:
            log.info("webhook %s subscribed at start: %s", subscription.id, _where(url))
        elif subscription.secret != self._secret:
            log.warning(
                "webhook %s to %s exists with another secret; it keeps its own",
                subscription.id,
                _where(url),
            )

    def wake(self) -> None:
        """There may be new events (callable from any thread, and often: it only sets a flag)."""
        if self._loop is None or self._wake.is_set():
            return
        if threading.get_ident() == self._thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop claiming; rounds stop after the attempt in flight, which may take `grace_s`
        before it is cancelled; every claim is released; the HTTP client is closed. Never
        raises."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._rounds:
            _, pending = await asyncio.wait(self._rounds, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._releases:
            await asyncio.wait(self._releases, timeout=_RELEASE_TIMEOUT_S)
        try:
            await self.sender.close()
        except Exception:  # stopping: nothing left to do about it
            log.debug("closing the webhook HTTP client failed", exc_info=True)

    # -- claiming ----------------------------------------------------------------------------

    async def _fill(self) -> None:
        """Claim due subscriptions while there is room, a round for each."""
        head: int | None = None
        while len(self._rounds) < self._concurrency and not self._stopping:
            if head is None:
                head = await self._orders.last_event_seq()
            self._claims += 1
            began = time.monotonic()
            claim = await self.store.claim(f"{self.owner}#{self._claims}", head, self.lease_s)
            if claim is None:
                return
            task = asyncio.create_task(
                self._round(claim, began), name=f"orderflow-webhook-{claim.subscription.id}"
            )
            self._rounds.add(task)
            task.add_done_callback(self._round_done)

    def _round_done(self, task: asyncio.Task[bool]) -> None:
        self._rounds.discard(task)
        if not task.cancelled() and task.exception() is None and task.result():
            self.wake()  # room for another, and maybe more to do

    def _wake_in(self, delay_s: float) -> None:
        """Look again once a retry set here comes due (others' come with the polls)."""
        assert self._loop is not None
        heapq.heappush(self._due, self._loop.time() + delay_s + 0.001)
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
            self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._due and not self._stopping:
            self._timer = self._loop.call_at(self._due[0], self._arm)

    # -- one round ---------------------------------------------------------------------------

    async def _round(self, claim: Claim, began: float) -> bool:
        """Deliver what is due of one subscription; True if it got anywhere (then there may be
        more to do at once; else the next poll will do)."""
        state = _Round(claim, began + self.lease_s, time.monotonic() + _ROUND_S)
        try:
            state.signer = Webhook(claim.subscription.secret)
            if not claim.subscription.ordered:
                await self._retry_due(state)
            await self._deliver_new(state)
        except Exception as exc:
            self._round_log.failed(exc)
            return False
        else:
            self._round_log.succeeded()
            return state.progressed or state.cursor != claim.subscription.cursor
        finally:
            release = asyncio.create_task(self._release(state))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
            await asyncio.shield(release)

    async def _release(self, state: _Round) -> None:
        try:
            async with asyncio.timeout(_RELEASE_TIMEOUT_S):
                await self.store.release(state.claim, state.cursor)
        except Exception as exc:  # its lease runs out instead
            log.warning(
                "could not release webhook %s (%s); its lease will run out",
                state.subscription.id,
                exc,
            )

    def _over(self, state: _Round) -> bool:
        return self._stopping or time.monotonic() >= state.ends_at

    async def _retry_due(self, state: _Round) -> None:
        """An unordered subscription's events that failed before and are due again."""
        for retry in state.claim.retries:
            if self._over(state):
                return
            try:
                found = await self._orders.read_events(retry.seq - 1, 1)
            except Gone:
                found = []
            if not found or found[0].seq != retry.seq:
                record = self._record(retry.seq, retry.attempt, Outcome.PRUNED, "pruned")
                pruned = Settlement(cursor=state.cursor, seq=retry.seq, record=record)
                if not await self._settle(state, pruned):
                    return
                continue
            if not await self._deliver(state, found[0], retry.attempt + 1, new=False):
                return

    async def _deliver_new(self, state: _Round) -> None:
        """The events after the cursor, in seq order."""
        retries = {r.seq: r.attempt for r in state.claim.retries}  # ordered: the next one's
        while not self._over(state):
            try:
                events = await self._orders.read_events(state.cursor, _BATCH)
            except Gone:
                if not await self._skip_pruned(state, retries):
                    return
                continue
            if not events:
                return
            for event in events:
                if not state.subscription.wants(event.type):
                    state.cursor = event.seq
                    continue
                if self._over(state):
                    return
                attempt = retries.pop(event.seq, 0) + 1
                if not await self._deliver(state, event, attempt, new=True):
                    return

    async def _skip_pruned(self, state: _Round, retries: dict[int, int]) -> bool:
        """The cursor fell behind what the log keeps: move it to the oldest event kept, record
        the gap, and forget the retry of a pruned event (an ordered one's). Binary search, as
        the log says only whether `after` is too old."""
        low, high = state.cursor, await self._orders.last_event_seq()
        while high - low > 1:
            middle = (low + high) // 2
            try:
                await self._orders.read_events(middle, 1)
                high = middle
            except Gone:
                low = middle
        log.warning(
            "webhook %s: events %d to %d were pruned from the log before they were delivered",
            state.subscription.id,
            state.cursor + 1,
            high,
        )
        error = f"events {state.cursor + 1} to {high} were pruned before they were delivered"
        record = self._record(high, 0, Outcome.PRUNED, error)
        pruned = min((seq for seq in retries if seq <= high), default=None)
        if not await self._settle(state, Settlement(cursor=high, seq=pruned, record=record)):
            return False
        state.cursor = high
        for seq in [seq for seq in retries if seq <= high]:
            del retries[seq]
        return True

    async def _deliver(self, state: _Round, event: OrderEvent, attempt: int, *, new: bool) -> bool:
        """One attempt at `event` (`new`: the next after the cursor, else a retry the cursor
        went past), and its settlement; whether the round goes on."""
        short = state.lease_until - time.monotonic() < self.timeout_s + _LEASE_SLACK_S
        if short and not await self._settle(state, Settlement(cursor=state.cursor)):
            return False  # the lease could not be extended: no attempt may outlast it
        at = self._clock.now()
        answer = await self._post(state, event, attempt, at)
        subscription = state.subscription
        delay_s: float | None = None
        if answer.delivered:
            outcome = Outcome.DELIVERED
        elif answer.status_code == 410:
            outcome = Outcome.DISABLED
        else:
            delay_s = retry_delay_s(self.schedule_s, attempt, answer.retry_after_s, self._rng)
            outcome = Outcome.GIVEN_UP if delay_s is None else Outcome.RETRYING
        passes = outcome is Outcome.RETRYING and not subscription.ordered
        cursor = state.cursor
        if new and (outcome in (Outcome.DELIVERED, Outcome.GIVEN_UP) or passes):
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
            seq=event.seq if attempt > 1 or outcome is Outcome.RETRYING else None,
            retry_attempt=attempt if outcome is Outcome.RETRYING else None,
            retry_in_s=delay_s or 0.0,
            disable=_DISABLED_REASON if outcome is Outcome.DISABLED else None,
            record=record,
        )
        if not await self._settle(state, settlement):
            return False
        state.cursor = cursor
        if outcome is Outcome.RETRYING:
            assert delay_s is not None
            self._wake_in(delay_s)
            log.debug(
                "webhook %s: %s failed (%s)", subscription.id, record.webhook_id, answer.error
            )
        elif outcome is Outcome.GIVEN_UP:
            log.warning(
                "webhook %s: gave up on %s after %d attempts: %s",
                subscription.id,
                record.webhook_id,
                attempt,
                answer.error,
            )
        elif outcome is Outcome.DISABLED:
            log.warning("webhook %s disabled: %s", subscription.id, _DISABLED_REASON)
        return outcome in (Outcome.DELIVERED, Outcome.GIVEN_UP) or passes

    async def _settle(self, state: _Round, settlement: Settlement) -> bool:
        sent = time.monotonic()
        if await self.store.settle(state.claim, settlement, self.lease_s):
            state.lease_until = sent + self.lease_s
            state.progressed |= settlement.record is not None
            return True
        log.info("webhook %s: claim lost (replayed, deleted or taken over)", state.subscription.id)
        return False

    def _record(self, seq: int, attempt: int, outcome: Outcome, error: str) -> DeliveryRecord:
        return DeliveryRecord(
            seq, message_id(seq), attempt, None, 0.0, error, outcome, self._clock.now()
        )

    # -- one attempt -------------------------------------------------------------------------

    async def _post(self, state: _Round, event: OrderEvent, attempt: int, at: datetime) -> Answer:
        """`event` sent, signed as of `at`, with the order as it is now; raises only the order
        store's errors."""
        order = await self._orders.find_order(event.order_id)
        data: Any = order if order is not None else {"id": event.order_id}
        body = _encode(Delivery(event.type, event.at, data))
        assert state.signer is not None
        return await self.sender.send(
            state.subscription.url, state.signer, message_id(event.seq), body, at, attempt
        )


def _where(url: str) -> str:
    """`url` for a log line: its scheme and host only (a query may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"
