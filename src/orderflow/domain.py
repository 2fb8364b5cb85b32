"""Orders, their statuses, the one state machine that moves them, and order ids (pure: no I/O).

The types are msgspec Structs: they validate on decode, encode straight to JSON with no copy,
and (with ``gc=False``) cost a fraction of the memory of a dataclass; the store keeps millions.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec

from orderflow.errors import IllegalTransition

MAX_TEXT_LENGTH = 200
MAX_ITEMS = 100
MAX_QUANTITY = 1_000_000


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Event(enum.StrEnum):
    """What can happen to an order; `next_status` decides where it leads."""

    START = "start"  # a trigger claims it for shipping
    SHIP = "ship"  # the shipper succeeded
    FAIL = "fail"  # the shipper failed or timed out
    CANCEL = "cancel"  # a user cancelled it
    RELEASE = "release"  # shutdown hands an unfinished shipment back
    RETRY = "retry"  # a failed attempt will be tried again (the history records each attempt)
    HANDBACK = "handback"  # a stopping process gives an order back for others to ship


_TRANSITIONS: dict[tuple[OrderStatus, Event], OrderStatus] = {
    (OrderStatus.PENDING, Event.START): OrderStatus.PROCESSING,
    (OrderStatus.PENDING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.SHIP): OrderStatus.SHIPPED,
    (OrderStatus.PROCESSING, Event.FAIL): OrderStatus.FAILED,
    (OrderStatus.PROCESSING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.RELEASE): OrderStatus.PENDING,
    (OrderStatus.PROCESSING, Event.RETRY): OrderStatus.PROCESSING,
    (OrderStatus.PROCESSING, Event.HANDBACK): OrderStatus.PROCESSING,
}


def sources_of(event: Event) -> tuple[OrderStatus, ...]:
    """The statuses `event` may be applied to."""
    return tuple(status for status, e in _TRANSITIONS if e is event)


def target_of(event: Event) -> OrderStatus:
    """The status `event` leads to (each event has exactly one)."""
    return next(target for (_, e), target in _TRANSITIONS.items() if e is event)


def next_status(current: OrderStatus, event: Event) -> OrderStatus:
    """The status `event` moves an order to from `current`.

    Raises:
        IllegalTransition: the move is not in the table (for example, cancelling a shipped order).
    """
    try:
        return _TRANSITIONS[current, event]
    except KeyError:
        raise IllegalTransition(f"cannot {event.value} an order that is {current.value}") from None


def is_terminal(status: OrderStatus) -> bool:
    return status in (OrderStatus.SHIPPED, OrderStatus.CANCELLED, OrderStatus.FAILED)


def can_delete(status: OrderStatus) -> bool:
    return status is OrderStatus.PENDING


_CONTROL = r"\x00-\x1f\x7f-\x9f"
_INVISIBLE = r"\s\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff"  # spaces, zero-width marks
# No control character, and at least one that shows; one pass over the text.
_SHOWS = re.compile(f"[^{_CONTROL}]*?[^{_CONTROL}{_INVISIBLE}][^{_CONTROL}]*")
_HAS_CONTROL = re.compile(f"[{_CONTROL}]")


def _clean_text(value: str, what: str) -> str:
    """Trimmed `value`. Raises ValueError "<what>: <problem>" (a validation error on decode;
    the API names the field from it) when blank, too long, or holding control characters."""
    value = value.strip()
    # Printable, non-empty text (the usual case, two C calls) shows something; else look closer.
    if not (value and value.isprintable()) and _SHOWS.fullmatch(value) is None:
        if _HAS_CONTROL.search(value):
            raise ValueError(f"{what}: must not contain control characters")
        raise ValueError(f"{what}: must not be blank")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"{what}: must be at most {MAX_TEXT_LENGTH} characters")
    return value


_Text = Annotated[str, msgspec.Meta(min_length=1, description="1 to 200 characters, trimmed")]


class Item(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    name: _Text
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]

    def __post_init__(self) -> None:
        name = _clean_text(self.name, "name")
        if name is not self.name:  # trimmed: strip() returns the very string when it is clean
            msgspec.structs.force_setattr(self, "name", name)


Items = Annotated[
    tuple[Item, ...], msgspec.Meta(min_length=1, max_length=MAX_ITEMS, description="1 to 100 items")
]


def clean_customer(customer: str) -> str:
    """The customer name as stored: trimmed, non-blank, at most 200 characters."""
    return _clean_text(customer, "customer")


class HistoryEntry(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    status: OrderStatus
    at: datetime
    reason: str | None = None


class Order(msgspec.Struct, frozen=True, gc=False):
    """An order as stored and as served: immutable, so it can be shared without copying."""

    id: str
    customer: str
    items: tuple[Item, ...]
    timestamp: datetime
    status: OrderStatus
    updated_at: datetime
    history: tuple[HistoryEntry, ...]


def new_order(order_id: str, customer: str, items: tuple[Item, ...], at: datetime) -> Order:
    """A pending order; `order_id` must come from `new_order_id(at, …)`."""
    return Order(
        order_id,
        customer,
        items,
        at,
        OrderStatus.PENDING,
        at,
        (HistoryEntry(OrderStatus.PENDING, at),),
    )


def advance(order: Order, event: Event, at: datetime, reason: str | None = None) -> Order:
    """`order` after `event` at `at`, with its history entry; raises IllegalTransition."""
    status = next_status(order.status, event)
    return msgspec.structs.replace(
        order,
        status=status,
        updated_at=at,
        history=(*order.history, HistoryEntry(status, at, reason)),
    )


# Order ids: "order_" + 30 lowercase hex digits over 120 bits: 56 bits of the timestamp in
# microseconds since 1970 (good until the year 4254), then 64 random bits. Fixed-width hex keeps
# numeric order, so the order of ids is the order of (timestamp, id): the time index is just
# the sorted ids, and a time bound becomes an id bound (`order_id_floor`).
ORDER_ID_PREFIX = "order_"
ID_TIME_CHARS = 14  # the hex digits after the prefix that encode the timestamp
_ID_DIGITS = 30
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ENTROPY_BITS = 64
_MAX_MICROS = (1 << 56) - 1
_HEX = frozenset("0123456789abcdef")


def micros_since_epoch(at: datetime) -> int:
    return (at - _EPOCH) // _MICROSECOND


def id_matches_timestamp(order_id: str, at: datetime) -> bool:
    """Whether `order_id` encodes `at`, as every id from `new_order_id` does; stores rely on it
    to answer a time range with an id range."""
    start = len(ORDER_ID_PREFIX)
    return int(order_id[start : start + ID_TIME_CHARS], 16) == micros_since_epoch(at)


def new_order_id(at: datetime, entropy: int) -> str:
    """A fresh id for an order created at `at` (aware); `entropy` supplies the random low bits."""
    value = (micros_since_epoch(at) << _ENTROPY_BITS) | (entropy & ((1 << _ENTROPY_BITS) - 1))
    return f"{ORDER_ID_PREFIX}{value:030x}"


def order_id_floor(at: datetime) -> str:
    """The smallest id an order created at or after `at` can have (clamped to the id range)."""
    micros = min(max(micros_since_epoch(at), 0), _MAX_MICROS)
    return f"{ORDER_ID_PREFIX}{micros << _ENTROPY_BITS:030x}"


def order_id_time(order_id: str) -> datetime:
    """The creation time encoded in a well-formed order id."""
    micros = int(order_id[len(ORDER_ID_PREFIX) :][:ID_TIME_CHARS], 16)
    return _EPOCH + timedelta(microseconds=micros)


def is_order_id(value: str) -> bool:
    return (
        len(value) == len(ORDER_ID_PREFIX) + _ID_DIGITS
        and value.startswith(ORDER_ID_PREFIX)
        and _HEX.issuperset(value[len(ORDER_ID_PREFIX) :])
    )


DEFAULT_PAGE = 100


class OrderQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A page of orders: `start` inclusive, `end` exclusive, after the id `cursor`, oldest first."""

    start: datetime | None = None
    end: datetime | None = None
    status: OrderStatus | None = None
    limit: int = DEFAULT_PAGE
    cursor: str | None = None


class Page(msgspec.Struct, frozen=True):
    """One page of a listing; `next_cursor` is None on the last page."""

    orders: list[Order]
    next_cursor: str | None
