"""Orders, their statuses, the one state machine that moves them, and order ids (pure: no I/O).

The types are msgspec Structs: they validate on decode, encode straight to JSON with no copy,
and (with ``gc=False``) cost a fraction of the memory of a dataclass; the store keeps millions.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from orderflow.errors import IllegalTransition

# The limits of the API, defined once: validation, the service and the OpenAPI document read
# them from here.
MAX_NAME_LENGTH = 200  # customer and item names, as sent (before trimming)
MAX_ITEMS = 100
MAX_QUANTITY = 1_000_000
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_REASON_LENGTH = 500  # an operator's reason for a retry or a cancel
MAX_SEQ = 999_999_999_999_999_999  # the largest event seq the API takes (18 digits)
MAX_BULK_IDS = 1000  # the ids one bulk action may name


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
    FAIL = "fail"  # the shipper failed for good, or timed out on the last attempt
    CANCEL = "cancel"  # a user cancelled it
    RELEASE = "release"  # a one-process shutdown puts an unfinished shipment back to pending
    REATTEMPT = "reattempt"  # an attempt failed and another follows (the holder keeps it)
    HANDBACK = "handback"  # its holder lets go of it: ready again for any processor
    RETRY = "retry"  # an operator sends a failed order back to pending


_TRANSITIONS: dict[tuple[OrderStatus, Event], OrderStatus] = {
    (OrderStatus.PENDING, Event.START): OrderStatus.PROCESSING,
    (OrderStatus.PENDING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.SHIP): OrderStatus.SHIPPED,
    (OrderStatus.PROCESSING, Event.FAIL): OrderStatus.FAILED,
    (OrderStatus.PROCESSING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.RELEASE): OrderStatus.PENDING,
    (OrderStatus.PROCESSING, Event.REATTEMPT): OrderStatus.PROCESSING,
    (OrderStatus.PROCESSING, Event.HANDBACK): OrderStatus.PROCESSING,
    (OrderStatus.FAILED, Event.RETRY): OrderStatus.PENDING,
}


def sources_of(event: Event) -> tuple[OrderStatus, ...]:
    """The statuses `event` may be applied to."""
    return _SOURCES[event]


def target_of(event: Event) -> OrderStatus:
    """The status `event` leads to (each event has exactly one)."""
    return _TARGETS[event]


_SOURCES = {e: tuple(s for s, e2 in _TRANSITIONS if e2 is e) for e in Event}
_TARGETS = {e: t for (_, e), t in _TRANSITIONS.items()}


def next_status(current: OrderStatus, event: Event) -> OrderStatus:
    """The status `event` moves an order to from `current`.

    Raises:
        IllegalTransition: the move is not in the table (for example, cancelling a shipped order).
    """
    try:
        return _TRANSITIONS[current, event]
    except KeyError:
        raise IllegalTransition(f"cannot {event.value} an order that is {current.value}") from None


def ends_hold(event: Event) -> bool:
    """Whether `event` ends the hold of whoever held the order (all but a reattempt)."""
    return event is not Event.REATTEMPT


def lost_track(owner: str) -> str:
    """The reason of a handback by a heartbeat of `owner` that no longer named the order (the
    PostgreSQL store words it alike in its SQL)."""
    return f"handed back: {owner} lost track of it"


def is_terminal(status: OrderStatus) -> bool:
    return status in (OrderStatus.SHIPPED, OrderStatus.CANCELLED)


def can_delete(status: OrderStatus) -> bool:
    return status is OrderStatus.PENDING


class EventType(enum.StrEnum):
    """What the event log says happened to an order (``order.`` + what happened)."""

    SUBMITTED = "order.submitted"
    PROCESSING = "order.processing"
    SHIPPED = "order.shipped"
    FAILED = "order.failed"
    ATTEMPT_FAILED = "order.attempt_failed"
    CANCELLED = "order.cancelled"
    RETRIED = "order.retried"
    RELEASED = "order.released"
    RESCUED = "order.rescued"
    DELETED = "order.deleted"


EVENT_TYPE = {
    Event.START: EventType.PROCESSING,
    Event.SHIP: EventType.SHIPPED,
    Event.FAIL: EventType.FAILED,
    Event.CANCEL: EventType.CANCELLED,
    Event.RELEASE: EventType.RELEASED,
    Event.REATTEMPT: EventType.ATTEMPT_FAILED,
    Event.HANDBACK: EventType.RELEASED,
    Event.RETRY: EventType.RETRIED,
}


# Names (customers, items) and an operator's reasons: at most MAX_NAME_LENGTH (MAX_REASON_LENGTH)
# characters as sent, no control character (nor a lone surrogate, which no database can store),
# and at least one character that shows; stored trimmed. NAME_PATTERN is that rule for the
# OpenAPI document; `clean_name` and `clean_reason` apply it.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_INVISIBLE = r"\s\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff"  # spaces, zero-width marks
NAME_PATTERN = f"^[^{_CONTROL}]*[^{_CONTROL}{_INVISIBLE}][^{_CONTROL}]*$"
PLAIN_PATTERN = f"^[^{_CONTROL}]*$"  # text searched for, kept as sent: no control character
_SHOWS = re.compile(NAME_PATTERN)
# Lone surrogates are refused too: a JSON text can carry one, no database can store it (and no
# JSON Schema pattern can name them: ECMA-262 refuses the range, so the document leaves it out).
_HAS_CONTROL = re.compile(f"[{_CONTROL}\ud800-\udfff]")


def clean_name(value: str, what: str) -> str:
    """`value` trimmed. Raises ValueError "<what>: <problem>" (the API names the field from it)
    when it is too long, blank, or holds a control character."""
    return _clean(value, what, MAX_NAME_LENGTH)


def clean_reason(value: str, what: str = "reason") -> str:
    """An operator's reason, by the rules of names but up to MAX_REASON_LENGTH characters:
    `value` trimmed, or ValueError "<what>: <problem>"."""
    return _clean(value, what, MAX_REASON_LENGTH)


def check_plain(value: str, what: str) -> str:
    """`value` as it is (a text to search for), or ValueError "<what>: <problem>" when it
    holds a control character or a lone surrogate."""
    if not value.isprintable() and _HAS_CONTROL.search(value):
        raise ValueError(f"{what}: must not contain control characters")
    return value


def _clean(value: str, what: str, max_length: int) -> str:
    if len(value) > max_length:
        raise ValueError(f"{what}: must be at most {max_length} characters")
    if not value.isprintable():  # the usual case is printable: one C call, no regex
        if _HAS_CONTROL.search(value):
            raise ValueError(f"{what}: must not contain control characters")
        if _SHOWS.fullmatch(value) is None:
            raise ValueError(f"{what}: must not be blank")
        return value.strip()
    trimmed = value.strip()
    if not trimmed:
        raise ValueError(f"{what}: must not be blank")
    return trimmed


# What a shipper says (a failure's text, a result) comes from code and receivers we do not
# control; it is stored whatever it holds. PostgreSQL takes no NUL in text or jsonb and UTF-8
# cannot encode a lone surrogate: both become U+FFFD. A reason is one line besides: other
# control characters become U+FFFD, line breaks and tabs a space.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_NOT_ONE_LINE = re.compile(f"[{_CONTROL}\ud800-\udfff]")
_SPACES = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85")


def _one_line(match: re.Match[str]) -> str:
    return " " if match.group() in _SPACES else "\ufffd"


def storable_reason(reason: str) -> str:
    """`reason` (a shipper's words, say) as one line any store can hold: a control character
    or lone surrogate becomes U+FFFD (a line break or tab, a space)."""
    if reason.isprintable():  # the usual case: one C call, no regex
        return reason
    return _NOT_ONE_LINE.sub(_one_line, reason)


def storable_json(value: Any) -> Any:
    """`value` (JSON data: a shipment's result) with NUL and lone surrogates replaced by
    U+FFFD in every string and key; `value` itself when it holds none."""
    return _storable(value) if _unstorable(value) else value


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(key) or _unstorable(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(_unstorable(item) for item in value)
    return False


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(item) for item in value]
    return value


def utc_instant(at: datetime, what: str) -> datetime:
    """`at` (a client's time) in UTC; a time without an offset is taken as UTC. Raises
    ValueError "<what>: out of range" when it has no UTC time (year 1 east of UTC, year 9999
    west of it): the one rule for every instant a client sends."""
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{what}: out of range") from None


# A time as the API writes it: RFC 3339, in UTC, with microseconds (JSON Schema: date-time).
Timestamp = Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class Item(msgspec.Struct, frozen=True, gc=False):
    """An item as stored; `api.schemas.ItemCreate` is what a client may send."""

    name: str
    quantity: int


class HistoryEntry(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    status: OrderStatus
    at: Timestamp
    reason: str | None = None


class Order(msgspec.Struct, frozen=True, gc=False):
    """An order as stored and as served: immutable, so it can be shared without copying.
    `shipment` is what the shipper returned when it shipped (a JSON object), if anything."""

    id: str
    customer: str
    items: tuple[Item, ...]
    timestamp: Timestamp
    status: OrderStatus
    updated_at: Timestamp
    history: tuple[HistoryEntry, ...]
    shipment: dict[str, Any] | None = None


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


def advance(
    order: Order,
    event: Event,
    at: datetime,
    reason: str | None = None,
    shipment: dict[str, Any] | None = None,
) -> Order:
    """`order` after `event` at `at`, with its history entry; raises IllegalTransition."""
    status = next_status(order.status, event)
    return msgspec.structs.replace(
        order,
        status=status,
        updated_at=at,
        history=(*order.history, HistoryEntry(status, at, reason)),
        shipment=shipment if shipment is not None else order.shipment,
    )


class Hold(msgspec.Struct, frozen=True, gc=False):
    """Who holds a processing order to ship it, and under which fencing token. The token grows
    with every acquisition of the order, so a holder that lost it (its lease ran out, it was
    rescued and acquired again, even by the same process) is refused by the store on every
    write it still makes under the old token."""

    owner: str
    token: int


_encode_order = msgspec.json.Encoder().encode
_decode_order = msgspec.json.Decoder(Order).decode


class Parcel:
    """An order on its way out, as the store had it when it handed it over: the `order`, and
    its `json` (byte for byte what the API shows of it), each made from the other when first
    asked. A store in memory keeps orders as JSON and a database row gives objects, and most
    shippers need only one of the two (or, like the simulated one, neither)."""

    __slots__ = ("_json", "_order", "id")

    def __init__(
        self, order_id: str, *, json: bytes | None = None, order: Order | None = None
    ) -> None:
        if json is None and order is None:
            raise ValueError("a parcel needs the order or its JSON")
        self.id = order_id
        self._json = json
        self._order = order

    @property
    def order(self) -> Order:
        order = self._order
        if order is None:
            assert self._json is not None
            order = self._order = _decode_order(self._json)
        return order

    @property
    def json(self) -> bytes:
        json = self._json
        if json is None:
            json = self._json = _encode_order(self._order)
        return json

    def __repr__(self) -> str:
        return f"Parcel({self.id!r})"


class Held:
    """An order handed to a holder by `OrderStore.acquire` (its `parcel`), with the token of
    that hold."""

    __slots__ = ("parcel", "token")

    def __init__(self, parcel: Parcel, token: int) -> None:
        self.parcel = parcel
        self.token = token

    @property
    def order(self) -> Order:
        return self.parcel.order

    def __repr__(self) -> str:
        return f"Held({self.parcel.id!r}, {self.token})"


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """A holder's write to an order it holds: `event` at `at`, with `reason` and, for a
    shipment, its result; checked against (owner, `token`) by the store. Whatever the shipper
    said, `reason` and `shipment` are made storable here (`storable_reason`, `storable_json`),
    so that no store refuses an outcome for its data."""

    order_id: str
    token: int
    event: Event
    at: datetime
    reason: str | None = None
    shipment: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # A shipper's words and result, whatever they hold, become what every store can keep.
        reason, shipment = self.reason, self.shipment
        if reason is not None and not reason.isprintable():
            msgspec.structs.force_setattr(self, "reason", storable_reason(reason))
        if shipment is not None:
            msgspec.structs.force_setattr(self, "shipment", storable_json(shipment))


# Order ids: "order_" + 30 lowercase hex digits over 120 bits: 56 bits of the timestamp in
# microseconds since 1970 (good until the year 4254), then 64 random bits. Fixed-width hex keeps
# numeric order, so the order of ids is the order of (timestamp, id): the time index is just
# the sorted ids, and a time bound becomes an id bound (`order_id_floor`).
ORDER_ID_PREFIX = "order_"
ID_TIME_CHARS = 14  # the hex digits after the prefix that encode the timestamp
_ID_DIGITS = 30
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MINUTE = timedelta(minutes=1)
_ENTROPY_BITS = 64
_MAX_MICROS = (1 << 56) - 1
_HEX = frozenset("0123456789abcdef")
#: `is_order_id` as a pattern, for the OpenAPI document.
ORDER_ID_PATTERN = f"^{ORDER_ID_PREFIX}[0-9a-f]{{{_ID_DIGITS}}}$"


def micros_since_epoch(at: datetime) -> int:
    return (at - _EPOCH) // _MICROSECOND


def minute_of(at: datetime) -> int:
    """The minute holding `at`, counted from 1970 (UTC): how every store bins the counts of
    orders submitted, shipped and failed."""
    return (at - _EPOCH) // _MINUTE


def minute_start(minute: int) -> datetime:
    """The first instant of `minute` (as `minute_of` counts)."""
    return _EPOCH + minute * _MINUTE


def id_matches_timestamp(order_id: str, at: datetime) -> bool:
    """Whether `order_id` encodes `at`, as every id from `new_order_id` does; stores rely on it
    to answer a time range with an id range."""
    start = len(ORDER_ID_PREFIX)
    return int(order_id[start : start + ID_TIME_CHARS], 16) == micros_since_epoch(at)


def new_order_id(at: datetime, entropy: int) -> str:
    """A fresh id for an order created at `at` (aware); `entropy` supplies the random low bits."""
    value = (micros_since_epoch(at) << _ENTROPY_BITS) | (entropy & ((1 << _ENTROPY_BITS) - 1))
    return _id_of(value)


def order_id_floor(at: datetime) -> str:
    """The smallest id an order created at or after `at` can have (clamped to the id range)."""
    micros = min(max(micros_since_epoch(at), 0), _MAX_MICROS)
    return _id_of(micros << _ENTROPY_BITS)


def _id_of(value: int) -> str:
    # The 30 hex digits of a 120-bit number (bytes.hex is several times faster than format).
    return ORDER_ID_PREFIX + value.to_bytes(_ID_DIGITS // 2).hex()


def order_id_micros(order_id: str) -> int:
    """The creation time encoded in a well-formed order id, in microseconds since 1970."""
    start = len(ORDER_ID_PREFIX)
    return int(order_id[start : start + ID_TIME_CHARS], 16)


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


MIN_ID_TAIL = 8  # the shortest tail of an id a search takes (the dashboard shows ids so)
ORDER_ID_LENGTH = len(ORDER_ID_PREFIX) + _ID_DIGITS
_ID_CHARS = frozenset(ORDER_ID_PREFIX) | _HEX


def search_key(text: str) -> str:
    """The key a customer name is searched by: its Unicode casefold ("Straße" → "strasse").
    Computed in Python by every store (a database's lower() is not casefold), so every store
    answers a search alike."""
    return text.casefold()


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix`, in code point order
    (byte order of UTF-8, as SQLite's BINARY and PostgreSQL's "C" collation compare): a
    prefix search is then the range [prefix, prefix_end). None: no such bound."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # no surrogate is ever stored: skip their block
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def prefix_bounds(prefix: str) -> tuple[str, ...]:
    """The range of the keys that start with `prefix`: (prefix, prefix_end), or (prefix,)
    when no key is above them all."""
    end = prefix_end(prefix)
    return (prefix,) if end is None else (prefix, end)


def reversed_id(order_id: str) -> str:
    """An id (or an id's tail) backwards: the key a database finds ids by their tail with (a
    tail of the id is a prefix of this)."""
    return order_id[::-1]


def could_end_an_id(tail: str) -> bool:
    """Whether `tail` holds only characters an order id has (else no id ends with it)."""
    return _ID_CHARS.issuperset(tail)


class OrderQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A page of orders: `start` inclusive, `end` exclusive, after the id `cursor` (before it,
    `newest` first), oldest first unless `newest`; `customer`: the `search_key` prefix of the
    customer's; `id_tail`: what the order's id ends with (a whole id is its own tail)."""

    start: datetime | None = None
    end: datetime | None = None
    status: OrderStatus | None = None
    limit: int = DEFAULT_PAGE
    cursor: str | None = None
    customer: str | None = None
    id_tail: str | None = None
    newest: bool = False

    @property
    def searches(self) -> bool:
        """Whether it looks at more than ids and status (a customer or an id's tail)."""
        return self.customer is not None or self.id_tail is not None


class Page(msgspec.Struct, frozen=True):
    """One page of a listing; `next_cursor` is None on the last page."""

    orders: list[Order]
    next_cursor: str | None


class ReasonCount(msgspec.Struct, frozen=True):
    reason: str
    count: int


class Stats(msgspec.Struct, frozen=True):
    """Orders by status (every status), and the most frequent reasons of failed orders."""

    by_status: dict[OrderStatus, int]
    failed_reasons: list[ReasonCount]


class OrderFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which orders a bulk action takes: created in [`start`, `end`), whose customer's
    `search_key` starts with `customer`, and whose latest history entry has a reason
    containing `reason_contains` (case-insensitive), each when given."""

    start: datetime | None = None
    end: datetime | None = None
    reason_contains: str | None = None
    customer: str | None = None

    def customer_matches(self, key: str) -> bool:
        """Whether a customer of search key `key` passes the customer condition."""
        return self.customer is None or key.startswith(self.customer)

    def reason_matches(self, reason: str | None) -> bool:
        """Whether a latest history entry with `reason` passes the reason condition (the
        time range is the store's to check: it is an id range)."""
        if self.reason_contains is None:
            return True
        return reason is not None and self.reason_contains.casefold() in reason.casefold()


class OrderEvent(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One entry of the event log: what happened to an order, at `at`, leaving it in `status`.
    `seq` grows strictly through the log of a store; `data` carries what the event adds (a
    shipment's result)."""

    seq: int
    type: EventType
    order_id: str
    status: OrderStatus | None
    at: Timestamp
    reason: str | None = None
    data: dict[str, Any] | None = None
