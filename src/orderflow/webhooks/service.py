"""WebhookService: what the API (and the start-up) asks of webhooks: subscribe a URL, list, show
and delete subscriptions, read their deliveries log, replay from a seq. The deliverer does the
sending; this service tells it when subscriptions changed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from orderflow.clock import Clock
from orderflow.domain import EventType
from orderflow.signing import check_secret, new_secret
from orderflow.store.base import OrderStore
from orderflow.webhooks.destinations import Destinations
from orderflow.webhooks.model import DeliveryRecord, Subscription, check_url, new_webhook_id
from orderflow.webhooks.store import WebhookStore

log = logging.getLogger("orderflow.webhooks")


class WebhookService:
    """Args:
    orders: the order store whose event log the subscriptions follow.
    store: where subscriptions live.
    destinations: where webhooks may go (checked at subscription).
    changed: called when subscriptions were made or replayed (the deliverer looks at once).
    """

    def __init__(
        self,
        orders: OrderStore,
        store: WebhookStore,
        destinations: Destinations,
        clock: Clock,
        *,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._orders = orders
        self._store = store
        self._destinations = destinations
        self._clock = clock
        self._changed = changed

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
        await self._destinations.check(url)
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
        await self._store.add(subscription)
        self._changed()
        log.info("webhook %s subscribed: %s", subscription.id, where(url))
        return subscription

    async def subscribe_at_start(self, urls: Sequence[str], secret: str) -> None:
        """Subscribe each of `urls` (to every event, ordered, signed with `secret`) unless a
        subscription to it exists. Raises ValueError "--webhook: …" when a URL is or resolves
        to a forbidden address."""
        for url in urls:
            try:
                await self._destinations.check(url)
            except ValueError as exc:
                raise ValueError(f"--webhook: {str(exc).removeprefix('url: ')}") from None
            head = await self._orders.last_event_seq()
            wanted = Subscription(new_webhook_id(), url, (), secret, True, self._clock.now(), head)
            subscription, added = await self._store.ensure(wanted)
            if added:
                log.info("webhook %s subscribed at start: %s", subscription.id, where(url))
            elif subscription.secret != secret:
                log.warning(
                    "webhook %s to %s exists with another secret; it keeps its own",
                    subscription.id,
                    where(url),
                )

    async def replay(self, webhook_id: str, after_seq: int | None) -> Subscription:
        """Deliver the events after `after_seq` again (None: resume from the cursor), with
        backoff cleared and the subscription enabled again; a seq beyond the newest event
        means from the newest on. Raises WebhookNotFound, and Gone when the events after
        `after_seq` were pruned from the log."""
        await self._store.get(webhook_id)
        if after_seq is not None:
            after_seq = min(after_seq, await self._orders.last_event_seq())
            await self._orders.read_events(after_seq, 1)  # raises Gone
        subscription = await self._store.replay(webhook_id, after_seq)
        self._changed()
        return subscription

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription, the oldest first."""
        return await self._store.list_subscriptions()

    async def get(self, webhook_id: str) -> Subscription:
        """The subscription; raises WebhookNotFound."""
        return await self._store.get(webhook_id)

    async def delete(self, webhook_id: str) -> None:
        """Delete the subscription; raises WebhookNotFound."""
        await self._store.delete(webhook_id)

    async def deliveries(self, webhook_id: str) -> list[DeliveryRecord]:
        """The newest attempts first; raises WebhookNotFound."""
        return await self._store.deliveries(webhook_id)

    async def last_seq(self) -> int:
        """The newest event's seq (0 before any): what each subscription's lag counts to."""
        return await self._orders.last_event_seq()

    async def lag(self, last_seq: int) -> int:
        """How many events the furthest-behind enabled subscription has yet to deal with, of
        those up to `last_seq` (0 without one)."""
        cursors = [
            s.cursor for s in await self._store.list_subscriptions() if s.disabled_at is None
        ]
        return max(0, last_seq - min(cursors)) if cursors else 0


def where(url: str) -> str:
    """`url` for a log line: its scheme and host only (a query may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"
