"""Wire formats of the webhook routes, and the body every delivery carries. The URL and secret
rules are the model's patterns, so the OpenAPI document shows what the service accepts; what
a pattern cannot say (the host's length, where it leads) the URL's description does."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec

from orderflow.api.schemas import Check
from orderflow.domain import MAX_SEQ, EventType
from orderflow.signing import SECRET_PATTERN, check_secret
from orderflow.webhooks.model import (
    MAX_URL_LENGTH,
    URL_PATTERN,
    DeliveryRecord,
    Subscription,
    check_url,
)

_Url = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_URL_LENGTH,
        # Checked by `check_url` (in __post_init__), whose messages say what is wrong.
        extra_json_schema={"pattern": URL_PATTERN},
        description="where to POST: http(s)://host[:port][/path][?query] (no user info, no"
        " fragment, no IPv6 literal; host labels of at most 63 characters, the host at most 253;"
        " an IPv4 address as four decimal numbers). A host that is, or resolves to, a loopback,"
        " private, link-local, shared, multicast, reserved or unspecified address is refused"
        " (unless the service runs with --webhook-allow-private); a name that does not resolve"
        " yet is accepted, and every connection is checked again. Redirects are not followed",
        examples=["https://example.com/hooks/orderflow"],
    ),
]
_Secret = Annotated[
    str,
    msgspec.Meta(
        pattern=SECRET_PATTERN,
        description="the signing key: 'whsec_' and the base64 (with its padding) of 24 to 64"
        " bytes; generated when not given",
    ),
]
_Types = Annotated[
    tuple[EventType, ...],
    msgspec.Meta(max_length=len(EventType), description="the event types wanted; none: all"),
]


class WebhookCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A new subscription."""

    url: _Url
    types: _Types = ()
    secret: _Secret | None = None
    ordered: bool = True
    field_checks: ClassVar[dict[str, Check]] = {"url": check_url, "secret": check_secret}

    def __post_init__(self) -> None:
        # The URL's rules, with their own messages; the secret's pattern again, whole: a JSON
        # Schema `$` never matches before a final line break, Python's does.
        check_url(self.url)
        if self.secret is not None:
            check_secret(self.secret)
        types = tuple(dict.fromkeys(self.types))
        if len(types) != len(self.types):
            msgspec.structs.force_setattr(self, "types", types)


# A whole number, as JSON Schema's "integer" means: 2 and 2.0 alike (checked in __post_init__).
_Seq = Annotated[
    int | float,
    msgspec.Meta(
        extra_json_schema={
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_SEQ,
            "description": "deliver the events after this seq (again); beyond the newest"
            " event: from the newest on. Omitted: from where the subscription is.",
        }
    ),
]


class ReplayRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where to deliver again from."""

    after_seq: _Seq | None = None

    def __post_init__(self) -> None:
        seq = self.after_seq
        if seq is None:
            return
        if not (0 <= seq <= MAX_SEQ and seq == int(seq)):
            raise ValueError(f"after_seq: must be a whole number from 0 to {MAX_SEQ}")
        if type(seq) is float:
            msgspec.structs.force_setattr(self, "after_seq", int(seq))


class WebhookPublic(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription as the API shows it (never its secret, once created).

    Attributes:
        cursor: the seq up to which events were delivered, skipped as not wanted, or given up.
        next_attempt_at: when a failed delivery is due again, if one is.
        lag: how many events the subscription is behind: the newest event's seq minus
            `cursor` (events of types it does not want count too, until skipped).
    """

    id: str
    url: str
    types: list[EventType]
    ordered: bool
    created_at: datetime
    cursor: int
    disabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    next_attempt_at: datetime | None
    lag: int


class WebhookCreated(WebhookPublic, frozen=True, kw_only=True):
    """A new subscription, with its secret: the only time the API shows it."""

    secret: str


class WebhookList(msgspec.Struct, frozen=True):
    webhooks: list[WebhookPublic]
    count: int


class DeliveryList(msgspec.Struct, frozen=True):
    """The newest attempts first: the last 100 of the subscription."""

    deliveries: list[DeliveryRecord]
    count: int


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """The body of every delivery: the event's type and time, and the order as
    ``GET /orders/{id}`` shows it when it is sent (``{"id": …}`` once it is deleted)."""

    type: EventType
    timestamp: datetime
    data: Any


def public(subscription: Subscription, last_seq: int) -> WebhookPublic:
    """The subscription as the API shows it, its lag counted up to `last_seq` (the newest
    event's seq)."""
    s = subscription
    return WebhookPublic(
        id=s.id,
        url=s.url,
        types=list(s.types),
        ordered=s.ordered,
        created_at=s.created_at,
        cursor=s.cursor,
        disabled=s.disabled_at is not None,
        disabled_at=s.disabled_at,
        disabled_reason=s.disabled_reason,
        next_attempt_at=s.retry_at,
        lag=max(0, last_seq - s.cursor),
    )


def created(subscription: Subscription) -> WebhookCreated:
    view = public(subscription, subscription.cursor)  # new: it starts at the newest event
    return WebhookCreated(**msgspec.structs.asdict(view), secret=subscription.secret)
