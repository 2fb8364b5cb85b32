"""The webhook routes (`WEBHOOK_ROUTES`): subscriptions (create, list, show, delete), their
deliveries log, and replay. The handlers take what they need of the running service
(`WebhookServices`: the webhook service) and talk to nothing else."""

from __future__ import annotations

from typing import Protocol

import msgspec

from orderflow.api.errors import HTTPProblem
from orderflow.api.http import JSON, Request, Response, json_response, no_body
from orderflow.api.routing import Param, Route
from orderflow.api.schemas import FieldError, Message
from orderflow.errors import WebhookNotFound
from orderflow.webhooks.model import WEBHOOK_ID_PATTERN, is_webhook_id
from orderflow.webhooks.schemas import (
    DeliveryList,
    ReplayRequest,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookPublic,
    created,
    public,
)
from orderflow.webhooks.service import WebhookService


class WebhookServices(Protocol):
    """What the webhook routes need of the running service."""

    @property
    def webhooks(self) -> WebhookService: ...


_encode = msgspec.json.Encoder().encode
_decode_create = msgspec.json.Decoder(WebhookCreate).decode
_decode_replay = msgspec.json.Decoder(ReplayRequest).decode


def _id(request: Request) -> str:
    """The path's webhook id; a malformed one is a webhook that does not exist (404)."""
    webhook_id = request.params[0]
    if not is_webhook_id(webhook_id):
        raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
    return webhook_id


async def create_webhook(services: WebhookServices, request: Request) -> Response:
    create: WebhookCreate = await request.json(_decode_create)
    try:
        subscription = await services.webhooks.subscribe(
            create.url, create.types, create.secret, create.ordered
        )
    except ValueError as exc:  # where the URL leads: known only once its host is looked up
        field, _, message = str(exc).partition(": ")
        raise HTTPProblem("invalid-request", str(exc), [FieldError(field, message)]) from None
    headers = [JSON, ("location", f"/webhooks/{subscription.id}")]
    return Response(201, _encode(created(subscription)), headers)


async def list_webhooks(services: WebhookServices, request: Request) -> Response:
    request.query_params(())
    # The seq first: a cursor read after it may be past it, which counts as no lag.
    last_seq = await services.webhooks.last_seq()
    subscriptions = await services.webhooks.subscriptions()
    views = [public(s, last_seq) for s in subscriptions]
    return json_response(200, WebhookList(views, len(views)))


async def get_webhook(services: WebhookServices, request: Request) -> Response:
    webhook_id = _id(request)
    last_seq = await services.webhooks.last_seq()
    return json_response(200, public(await services.webhooks.get(webhook_id), last_seq))


async def delete_webhook(services: WebhookServices, request: Request) -> Response:
    await services.webhooks.delete(_id(request))
    return json_response(200, Message("Webhook deleted"))


async def list_deliveries(services: WebhookServices, request: Request) -> Response:
    request.query_params(())
    deliveries = await services.webhooks.deliveries(_id(request))
    return json_response(200, DeliveryList(deliveries, len(deliveries)))


async def replay_webhook(services: WebhookServices, request: Request) -> Response:
    webhook_id = _id(request)
    replay = ReplayRequest()
    if not no_body(request):
        replay = await request.json(_decode_replay)
    after_seq = None if replay.after_seq is None else int(replay.after_seq)
    subscription = await services.webhooks.replay(webhook_id, after_seq)
    return json_response(200, public(subscription, await services.webhooks.last_seq()))


_WEBHOOK_ID = Param(
    "webhook_id", {"type": "string", "pattern": WEBHOOK_ID_PATTERN}, "a webhook id", "path", True
)
_DELIVERY = (
    "Each event is POSTed as `{type, timestamp, data}` (`data`: the order as `GET /orders/{id}`"
    " shows it when sent, `{id}` once deleted), signed per the Standard Webhooks specification"
    " (`webhook-id` = `evt_` + the event's seq, the same on every attempt; `webhook-timestamp`;"
    " `webhook-signature`). 2xx is delivered; 410 disables the subscription; anything else, a"
    " timeout, no answer, or a destination refused when connecting (a name that now resolves"
    " to an internal address) is tried again per --webhook-retry-schedule (honouring"
    " Retry-After), then given up. Redirects are not followed; a non-2xx answer is recorded"
    " with the first 200 characters of its body. `ordered` (the default) delivers strictly in"
    " seq order, one at a time; `ordered: false` lets later events go past a failing one."
)

WEBHOOK_ROUTES: tuple[Route[WebhookServices], ...] = (
    Route("POST", "/webhooks", create_webhook, "Subscribe a URL to order events", 201,
          WebhookCreated, WebhookCreate, statuses=(422, 503), role="operate",
          description=_DELIVERY + " Events from now on are delivered; the answer is the only"
          " one that shows the secret.",
          returns="The new subscription, with its signing secret (shown only here)",
          example={"url": "https://example.com/hooks/orderflow",
                   "types": ["order.shipped", "order.failed"]}),
    Route("GET", "/webhooks", list_webhooks, "Webhook subscriptions, the oldest first", 200,
          WebhookList, statuses=(503,), role="operate",
          returns="Every subscription (never their secrets), with `count`"),
    Route("GET", "/webhooks/{webhook_id}", get_webhook, "One webhook subscription", 200,
          WebhookPublic, params=(_WEBHOOK_ID,), statuses=(404, 503), role="operate",
          returns="The subscription: URL, types, cursor, whether it is disabled and why"),
    Route("DELETE", "/webhooks/{webhook_id}", delete_webhook, "Delete a webhook subscription",
          200, Message, params=(_WEBHOOK_ID,), statuses=(404, 503), role="operate",
          returns="A confirmation; nothing more is delivered to it",
          answer_example={"message": "Webhook deleted"}),
    Route("GET", "/webhooks/{webhook_id}/deliveries", list_deliveries,
          "The subscription's latest delivery attempts, the newest first", 200, DeliveryList,
          params=(_WEBHOOK_ID,), statuses=(404, 503), role="operate",
          description="The last 100 attempts: the event's seq and webhook-id, the attempt"
          " number, the receiver's status code (null: no answer), the latency, the error, and"
          " what became of it (delivered, retrying, given_up, disabled, pruned).",
          returns="The delivery attempts, the newest first, with `count`"),
    Route("POST", "/webhooks/{webhook_id}/replay", replay_webhook,
          "Deliver again after a seq; clears backoff and enables the subscription again", 200,
          WebhookPublic, ReplayRequest, params=(_WEBHOOK_ID,), statuses=(404, 410, 422, 503),
          role="operate", body_required=False, example={"after_seq": 0},
          description="Sets the subscription's cursor to `after_seq` (omitted: leaves it),"
          " forgets pending retries, and enables the subscription if it was disabled. An"
          " attempt in flight finishes first. 410 when the events after `after_seq` were"
          " pruned from the log (--event-retention).",
          returns="The subscription as it is now (enabled, its cursor at `after_seq`)"),
)  # fmt: skip
