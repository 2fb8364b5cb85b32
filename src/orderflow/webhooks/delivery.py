"""Deliverer: sends the event log to webhook subscriptions, signed per the Standard Webhooks
specification, at least once and, per subscription, in seq order. (Subscribing, listing and
replaying are the `WebhookService`'s; the deliverer only delivers.)

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
from dataclasses import dataclass

from orderflow.clock import Clock, SystemClock, new_owner_id
from orderflow.settings import DEFAULTS
from orderflow.store.base import OrderStore
from orderflow.supervise import OutageLog, Wakeup, supervised
from orderflow.webhooks.model import Claim, parse_schedule
from orderflow.webhooks.rounds import Round, RoundContext, release_claim
from orderflow.webhooks.sender import Sender
from orderflow.webhooks.store import WebhookStore

log = logging.getLogger("orderflow.webhooks")

_ROUND_S = 2.0  # a round ends after this, so that other subscriptions and instances get turns
_RELEASE_TIMEOUT_S = 5.0
#: The Standard Webhooks schedule: retries after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h.
DEFAULT_SCHEDULE_S = parse_schedule(DEFAULTS.webhook_retry_schedule)


@dataclass(frozen=True)
class DelivererSettings:
    """How the deliverer works; durations in seconds.

    Attributes:
        schedule_s: the waits before each retry of an event (the last spent: give up).
        timeout_s: the most one attempt may take, connecting included.
        concurrency: the most subscriptions this instance delivers to at once.
        poll_s: how often to look for due subscriptions nobody announced (another instance's).
        lease_s: how long a claim lasts without a write (None: `timeout_s` + 15 s); another
            instance takes over a dead one's subscriptions after it.
    """

    schedule_s: tuple[float, ...] = DEFAULT_SCHEDULE_S
    timeout_s: float = 10.0
    concurrency: int = 16
    poll_s: float = 1.0
    lease_s: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("the webhook concurrency must be at least 1")
        if not self.timeout_s > 0:
            raise ValueError(f"the webhook timeout must be more than 0 s, not {self.timeout_s}")

    @property
    def lease(self) -> float:
        return self.lease_s if self.lease_s is not None else self.timeout_s + 15.0


class Deliverer:
    """Delivers the events of `orders`' log to the subscriptions in `store`, through `sender`
    (which is its own: `stop` closes it)."""

    def __init__(
        self,
        orders: OrderStore,
        store: WebhookStore,
        sender: Sender,
        settings: DelivererSettings | None = None,
        *,
        owner: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings = settings or DelivererSettings()
        self._orders = orders
        self._store = store
        self._sender = sender
        self.owner = owner or new_owner_id()
        self._context = RoundContext(
            orders=orders,
            store=store,
            sender=sender,
            clock=clock or SystemClock(),
            rng=rng or random.Random(),
            schedule_s=settings.schedule_s,
            timeout_s=settings.timeout_s,
            lease_s=settings.lease,
            stopping=lambda: self.stopping,
            wake_in=self.wake_in,
            unforeseen=self.unforeseen,
        )
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

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        """Deliver until `stop`."""
        self._loop = asyncio.get_running_loop()
        self._wake.bind()
        self._task = asyncio.create_task(
            supervised(
                self._fill,
                every_s=self.settings.poll_s,
                log=OutageLog(log, "claiming webhook subscriptions"),
                wake=self._wake,
            ),
            name="orderflow-webhooks",
        )

    def wake(self) -> None:
        """There may be new events (callable from any thread, and often: it only sets a flag,
        and not even that while there is no subscription; the polls look for new ones)."""
        if self._subscribed:
            self._wake.set_soon()

    def subscriptions_changed(self) -> None:
        """Subscriptions were made or replayed here: look for due ones now."""
        self._subscribed = True
        self._made += 1
        self.wake()

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
            await self._sender.close()
        except Exception:  # stopping: nothing left to do about it
            log.debug("closing the webhook HTTP client failed", exc_info=True)

    # -- claiming ----------------------------------------------------------------------------

    async def _fill(self) -> None:
        """Claim due subscriptions while there is room, a round for each."""
        head: int | None = None
        lease_s = self.settings.lease
        while len(self._rounds) < self.settings.concurrency and not self.stopping:
            if head is None:
                head = await self._orders.last_event_seq()
            self._claims += 1
            began = time.monotonic()
            claiming = asyncio.ensure_future(
                self._store.claim(f"{self.owner}#{self._claims}", head, lease_s)
            )
            try:
                claim = await asyncio.shield(claiming)
            except asyncio.CancelledError:
                self._give_back(claiming)
                raise
            if claim is None:
                if not self._rounds:
                    made = self._made
                    exists = await self._store.any()
                    if made == self._made:  # (none was made here meanwhile)
                        self._subscribed = exists
                return
            task = asyncio.create_task(
                self._round(claim, began), name=f"orderflow-webhook-{claim.subscription.id}"
            )
            self._rounds.add(task)
            task.add_done_callback(self._round_done)

    def _give_back(self, claiming: asyncio.Future[Claim | None]) -> None:
        """A claim asked for as the deliverer stops: what it took goes back as soon as it is
        answered (the stop waits for it), not when its lease runs out."""

        async def give_back() -> None:
            try:
                claim = await claiming
            except Exception:  # nothing taken, or nothing known: the lease decides
                return
            if claim is not None:
                await release_claim(self._store, claim, claim.subscription.cursor)

        self._keep_release(asyncio.create_task(give_back()))

    def _keep_release(self, release: asyncio.Task[None]) -> None:
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

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
        lease_until = began + self.settings.lease
        state = Round(self._context, claim, lease_until, time.monotonic() + _ROUND_S)
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
            self._keep_release(release)
            await asyncio.shield(release)
