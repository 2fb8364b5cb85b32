"""Deliverer: sends the event log to webhook subscriptions, signed per the Standard Webhooks
specification, at least once and, per subscription, in seq order.

Every instance runs one. It claims due subscriptions one at a time (at most `concurrency` held
at once) and runs a *round* on each: read the events after the cursor, skip the unwanted ones,
POST the next wanted one, settle what became of it, go on:

    2xx                           delivered: the cursor moves past it
    410                           the subscription is disabled (the cursor stays before it)
    anything else, a timeout,     tried again after the schedule's next wait (give or take
    no answer, a redirect, a      10%, at least the receiver's Retry-After up to 1 h); an
    refused destination, any      ordered subscription waits for it, an unordered one goes on
    error in sending              past it. Once the schedule is spent the event is given up.

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
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver

from orderflow.clock import Clock, SystemClock
from orderflow.domain import EventType
from orderflow.processor import new_owner_id
from orderflow.settings import DEFAULTS, Settings, listed
from orderflow.signing import check_secret, new_secret
from orderflow.store.base import OrderStore
from orderflow.supervise import OutageLog, Wakeup, supervised
from orderflow.webhooks.destinations import Destinations
from orderflow.webhooks.model import (
    Claim,
    Subscription,
    check_url,
    new_webhook_id,
    parse_schedule,
)
from orderflow.webhooks.rounds import Round
from orderflow.webhooks.sender import Sender
from orderflow.webhooks.store import WebhookStore

log = logging.getLogger("orderflow.webhooks")

_ROUND_S = 2.0  # a round ends after this, so that other subscriptions and instances get turns
_RELEASE_TIMEOUT_S = 5.0
#: The Standard Webhooks schedule: retries after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h.
DEFAULT_SCHEDULE_S = parse_schedule(DEFAULTS.webhook_retry_schedule)


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
        allow_private: let webhooks go to private, loopback and other internal addresses
            (see `destinations`); off, such a subscription is refused, and so is a connection.
        resolver: resolves the receivers' names (default: the system's); tests give their own.

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
        allow_private: bool = False,
        resolver: AbstractResolver | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("the webhook concurrency must be at least 1")
        self.destinations = Destinations(
            allow_private=allow_private, resolver=resolver, timeout_s=timeout_s
        )
        for url in subscribe:
            check_url(url)
            self.destinations.check_literal(url)
        if subscribe and secret is None:
            raise ValueError("a secret is needed to sign the calls of subscriptions made at start")
        self.store = store
        self.orders = orders
        self.schedule_s = tuple(schedule_s)
        self.sender = Sender(timeout_s=timeout_s, destinations=self.destinations)
        self.timeout_s = timeout_s
        self.lease_s = lease_s if lease_s is not None else timeout_s + 15.0
        self._concurrency = concurrency
        self._poll_s = poll_s
        self._subscribe = tuple(subscribe)
        self._secret = None if secret is None else check_secret(secret)
        self.owner = owner or new_owner_id()
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self._claims = 0
        self._rounds: set[asyncio.Task[bool]] = set()
        self._releases: set[asyncio.Task[None]] = set()
        self._wake = Wakeup()
        self._due: list[float] = []  # loop times at which retries this instance set come due
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.stopping = False
        self._subscribed = True  # whether any subscription exists, as last seen (until the
        # first look, assume so); while there is none, new events wake nothing
        self._made = 0  # subscriptions made or replayed here
        self._round_log = OutageLog(log, "delivering webhooks")
        self._unforeseen: set[type[BaseException]] = set()  # kinds of error logged once

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        orders: OrderStore,
        store: WebhookStore,
        resolver: AbstractResolver | None = None,
    ) -> Deliverer:
        """A deliverer configured by the --webhook* flags. Raises ValueError naming the flag."""
        try:
            schedule = parse_schedule(settings.webhook_retry_schedule)
        except ValueError as exc:
            raise ValueError(f"--webhook-retry-schedule: {exc}") from None
        urls = listed(settings.webhook)
        policy = Destinations(allow_private=settings.webhook_allow_private)
        try:
            for url in urls:
                check_url(url)
                policy.check_literal(url)
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
            allow_private=settings.webhook_allow_private,
            resolver=resolver,
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
        Raises ValueError "url: …" (a malformed URL, or one that is or resolves to a forbidden
        address) or "secret: …"."""
        check_url(url)
        await self.destinations.check(url)
        head = await self.orders.last_event_seq()
        subscription = Subscription(
            new_webhook_id(),
            url,
            tuple(dict.fromkeys(types)),
            new_secret() if secret is None else check_secret(secret),
            ordered,
            self.clock.now(),
            head,
        )
        await self.store.add(subscription)
        self._subscribed = True
        self._made += 1
        log.info("webhook %s subscribed: %s", subscription.id, _where(url))
        return subscription

    async def replay(self, webhook_id: str, after_seq: int | None) -> Subscription:
        """Deliver the events after `after_seq` again (None: resume from the cursor), with
        backoff cleared and the subscription enabled again; a seq beyond the newest event
        means from the newest on. Raises WebhookNotFound, and Gone when the events after
        `after_seq` were pruned from the log."""
        await self.store.get(webhook_id)
        if after_seq is not None:
            after_seq = min(after_seq, await self.orders.last_event_seq())
            await self.orders.read_events(after_seq, 1)  # raises Gone
        subscription = await self.store.replay(webhook_id, after_seq)
        self._subscribed = True
        self._made += 1
        self.wake()
        return subscription

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        """Make the subscriptions asked for at start (if missing), then deliver until `stop`.
        Raises ValueError "--webhook: …" when such a URL resolves to a forbidden address."""
        self._loop = asyncio.get_running_loop()
        self._wake.bind()
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
        try:
            await self.destinations.check(url)
        except ValueError as exc:
            raise ValueError(f"--webhook: {str(exc).removeprefix('url: ')}") from None
        head = await self.orders.last_event_seq()
        wanted = Subscription(new_webhook_id(), url, (), self._secret, True, self.clock.now(), head)
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
        """There may be new events (callable from any thread, and often: it only sets a flag,
        and not even that while there is no subscription; the polls look for new ones)."""
        if self._subscribed:
            self._wake.set_soon()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop claiming; rounds stop after the attempt in flight, which may take `grace_s`
        before it is cancelled; every claim is released; the HTTP client is closed. Never
        raises."""
        self.stopping = True
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
        while len(self._rounds) < self._concurrency and not self.stopping:
            if head is None:
                head = await self.orders.last_event_seq()
            self._claims += 1
            began = time.monotonic()
            claim = await self.store.claim(f"{self.owner}#{self._claims}", head, self.lease_s)
            if claim is None:
                if not self._rounds:
                    made = self._made
                    exists = await self.store.any()
                    if made == self._made:  # (none was made here meanwhile)
                        self._subscribed = exists
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

    def unforeseen(self, webhook_id: str, exc: Exception) -> None:
        """Log an error in sending that no rule foresaw (the attempt failed with it): the first
        of each kind with its traceback, as a bug; the rest as DEBUG lines, since the deliveries
        log records each."""
        if type(exc) in self._unforeseen:
            log.debug("webhook %s: sending failed: %r", webhook_id, exc)
            return
        self._unforeseen.add(type(exc))
        log.error(
            "webhook %s: sending failed with an unforeseen %s (each such failure is a failed"
            " attempt; this kind is logged once)",
            webhook_id,
            type(exc).__name__,
            exc_info=exc,
        )

    def wake_in(self, delay_s: float) -> None:
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
        if self._due and not self.stopping:
            self._timer = self._loop.call_at(self._due[0], self._arm)

    # -- one round ---------------------------------------------------------------------------

    async def _round(self, claim: Claim, began: float) -> bool:
        """Deliver what is due of one subscription; True if it got anywhere (then there may be
        more to do at once; else the next poll will do)."""
        state = Round(self, claim, began + self.lease_s, time.monotonic() + _ROUND_S)
        try:
            progressed = await state.run()
        except Exception as exc:
            self._round_log.failed(exc)
            return False
        else:
            self._round_log.succeeded()
            return progressed
        finally:
            release = asyncio.create_task(state.release())
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
            await asyncio.shield(release)


def _where(url: str) -> str:
    """`url` for a log line: its scheme and host only (a query may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"
