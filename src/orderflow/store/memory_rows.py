"""How the in-memory store keeps an order: as its JSON, in two parts.

An order is read far more often than it changes, and read to be sent as JSON, so a row keeps
the order's JSON (byte for byte what msgspec writes for an `Order`) rather than objects: a page
of orders is then a join of bytes, and a row is a few hundred bytes of one kind (a million
orders fit in well under 500 bytes each). The JSON is split where the order changes:

    {"id":…,"customer":…,"items":[…],"timestamp":"…"  ← `head`: fixed at submission
    ,"status":…,"updated_at":…,"history":[…],"shipment":…}  ← `tail`: written by each change

A row as submitted (pending, its one history entry at its timestamp) has no tail: it follows
from the timestamp at the end of the head, so a new order costs one encoding. Nor has a row as
claimed: it follows from the timestamp and the claim (one `ClaimStamp` for a whole batch), so a
trigger of a million orders writes no JSON. An `Order` is read back by decoding the row
(`order_of`), for the paths that need objects (a shipment, a change), never for a listing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from orderflow.domain import HistoryEntry, Item, Order, OrderStatus, Timestamp, search_key

_encode = msgspec.json.Encoder().encode


class _Head(msgspec.Struct, gc=False):
    id: str
    customer: str
    items: tuple[Item, ...]
    timestamp: Timestamp


class _Tail(msgspec.Struct, gc=False):
    status: OrderStatus
    updated_at: Timestamp
    history: tuple[HistoryEntry, ...]
    shipment: dict[str, Any] | None


class ClaimStamp(msgspec.Struct, frozen=True, gc=False):
    """When a batch of orders was claimed, as a time and as JSON: shared by the batch."""

    at: datetime
    json: bytes


class Row(msgspec.Struct, frozen=True, gc=False):
    """An order's JSON in two parts (see the module docstring): `head` without its closing
    brace, `tail` without the comma before it (None: as submitted, or as claimed by `claim`);
    `status` is kept apart too, for the indexes and the state machine."""

    head: bytes
    status: OrderStatus
    tail: bytes | None = None
    claim: ClaimStamp | None = None


_decode_head = msgspec.json.Decoder(_Head).decode
_decode_tail = msgspec.json.Decoder(_Tail).decode
# A row as submitted ends its head with its timestamp as the clock makes every one (UTC, with
# microseconds: 29 bytes with the quotes, after `"timestamp":`); its tail repeats it twice.
_STAMP = 29
_STAMP_KEY = b'"timestamp":'
# Byte for byte what msgspec writes between the parts: the tail of a row as submitted (around
# the timestamp, twice), and of one as claimed (around the claim's time, the timestamp, the
# claim's time).
_SUBMITTED = (b',"status":"pending","updated_at":', b',"history":[{"status":"pending","at":',
              b'}],"shipment":null}')  # fmt: skip
_CLAIMED = (b',"status":"processing","updated_at":', b',"history":[{"status":"pending","at":',
            b'},{"status":"processing","at":', b'}],"shipment":null}')  # fmt: skip


def row_of(order: Order) -> Row:
    """The row that keeps `order`."""
    head = _encode(_Head(order.id, order.customer, order.items, order.timestamp))[:-1]
    if _is_as_submitted(order) and head[-_STAMP - len(_STAMP_KEY) : -_STAMP] == _STAMP_KEY:
        return Row(head, order.status)
    tail = tail_of(order.status, order.updated_at, order.history, order.shipment)
    return Row(head, order.status, tail)


def _is_as_submitted(order: Order) -> bool:
    history = order.history
    if len(history) != 1 or order.status is not OrderStatus.PENDING:
        return False
    first, at, updated_at = history[0], order.timestamp, order.updated_at
    return (
        first.status is OrderStatus.PENDING
        and first.reason is None
        and order.shipment is None
        # One object, as `domain.new_order` makes it; else (a snapshot's order) the same
        # instant written the same way.
        and (first.at is at or (first.at == at and first.at.utcoffset() == at.utcoffset()))
        and (updated_at is at or (updated_at == at and updated_at.utcoffset() == at.utcoffset()))
    )


def tail_of(
    status: OrderStatus,
    updated_at: datetime,
    history: tuple[HistoryEntry, ...],
    shipment: dict[str, Any] | None,
) -> bytes:
    return _encode(_Tail(status, updated_at, history, shipment))[1:]


def claim_at(at: datetime) -> ClaimStamp:
    """The claim of a batch at `at`."""
    return ClaimStamp(at, _encode(at))


def claimed(row: Row, claim: ClaimStamp) -> Row:
    """`row` (pending) claimed for shipping by `claim`."""
    if row.tail is None:  # the usual case: nothing to write
        return Row(row.head, OrderStatus.PROCESSING, None, claim)
    before = _decode_tail(b"{" + row.tail)
    history = (*before.history, HistoryEntry(OrderStatus.PROCESSING, claim.at))
    tail = tail_of(OrderStatus.PROCESSING, claim.at, history, before.shipment)
    return Row(row.head, OrderStatus.PROCESSING, tail)


_STATUS = {status: b'"status":"%s","updated_at":' % status.value.encode() for status in OrderStatus}
_ENTRY = {status: b'{"status":"%s","at":' % status.value.encode() for status in OrderStatus}
_HISTORY = b',"history":['
_SHIPMENT = b'],"shipment":'
_NO_SHIPMENT = b"null"


def advanced(
    row: Row,
    status: OrderStatus,
    at_json: bytes,
    reason: str | None = None,
    shipment: dict[str, Any] | None = None,
) -> Row:
    """`row` after a change to `status` at the time `at_json` (a timestamp as JSON: a batch
    of changes encodes its time once), with `reason`, and `shipment` when it brings one: its
    history gets the change's entry. Written as bytes around what the row holds, never decoded:
    byte for byte what `tail_of` writes for the order so changed (the tests hold it to that)."""
    entry = _ENTRY[status] + at_json
    entry += b"}" if reason is None else b',"reason":' + _encode(reason) + b"}"
    tail = row.tail
    if tail is None:
        if row.claim is None:  # as submitted
            entries = _ENTRY[OrderStatus.PENDING] + row.head[-_STAMP:] + b"}"
        else:  # as claimed
            entries = (_ENTRY[OrderStatus.PENDING] + row.head[-_STAMP:] + b"},"
                       + _ENTRY[OrderStatus.PROCESSING] + row.claim.json + b"}")  # fmt: skip
        kept = _NO_SHIPMENT
    else:
        # No history entry holds `],"shipment":` (its strings are escaped), so the first is
        # the end of the history, whatever the shipment after it holds.
        start = tail.index(_HISTORY) + len(_HISTORY)
        end = tail.index(_SHIPMENT, start)
        entries, kept = tail[start:end], tail[end + len(_SHIPMENT) : -1]
    result = kept if shipment is None else _encode(shipment)
    new_tail = b"".join(
        (_STATUS[status], at_json, _HISTORY, entries, b",", entry, _SHIPMENT, result, b"}")
    )
    return Row(row.head, status, new_tail)


def render(row: Row) -> bytes:
    """The order's JSON, byte for byte what `msgspec.json.encode(order)` writes."""
    return render_many((row,))[1:-1]


def render_many(rows: Iterable[Row]) -> bytes:
    """The JSON array of the orders of `rows`, each as `render` writes it."""
    # The hottest loop of a listing: one tuple of parts per order, one join for the page.
    parts = [b"["]
    status, history, end = _SUBMITTED
    processing, pending, then, over = _CLAIMED
    comma = b","
    for row in rows:
        head, tail = row.head, row.tail
        if tail is not None:
            parts += (head, comma, tail, comma)
        elif row.claim is None:
            at = head[-_STAMP:]
            parts += (head, status, at, history, at, end, comma)
        else:
            at, claim = head[-_STAMP:], row.claim.json
            parts += (head, processing, claim, pending, at, then, claim, over, comma)
    if len(parts) == 1:
        return b"[]"
    parts[-1] = b"]"  # in place of the last comma
    return b"".join(parts)


def order_of(row: Row) -> Order:
    """The order a row keeps."""
    head = _decode_head(row.head + b"}")
    if row.tail is None:
        at, claim = head.timestamp, row.claim
        submitted = HistoryEntry(OrderStatus.PENDING, at)
        if claim is None:
            return Order(head.id, head.customer, head.items, at, OrderStatus.PENDING, at,
                         (submitted,))  # fmt: skip
        history = (submitted, HistoryEntry(OrderStatus.PROCESSING, claim.at))
        return Order(head.id, head.customer, head.items, at, OrderStatus.PROCESSING, claim.at,
                     history)  # fmt: skip
    tail = _decode_tail(b"{" + row.tail)
    return Order(head.id, head.customer, head.items, head.timestamp, tail.status,
                 tail.updated_at, tail.history, tail.shipment)  # fmt: skip


def last_reason(row: Row) -> str | None:
    """The reason of the order's latest history entry."""
    if row.tail is None:  # as submitted or claimed: no reason
        return None
    return _decode_tail(b"{" + row.tail).history[-1].reason


class _Customer(msgspec.Struct, gc=False):
    customer: str


_decode_customer = msgspec.json.Decoder(_Customer).decode


def customer_key(row: Row) -> str:
    """The search key of the order's customer (`domain.search_key`), read from the head."""
    return search_key(_decode_customer(row.head + b"}").customer)
