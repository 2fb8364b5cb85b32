"""The in-memory store's rows (its orders kept as JSON) and its indexes: a row reads back as the
order it keeps, and writes the JSON msgspec writes for it, in whatever state."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from orderflow.domain import (
    Event,
    HistoryEntry,
    Item,
    Order,
    OrderStatus,
    advance,
    new_order,
    new_order_id,
)
from orderflow.store.memory_rows import (
    claim_at,
    claimed,
    last_reason,
    order_of,
    render,
    render_many,
    row_of,
)
from orderflow.store.memory_table import SortedIds

_names = st.text(min_size=1, max_size=30)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_shipments = st.none() | st.dictionaries(
    st.text(max_size=5),
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    max_size=3,
)


@st.composite
def orders(draw: st.DrawFn) -> Order:
    at = draw(_times)
    items = tuple(
        Item(draw(_names), draw(st.integers(1, 10**6))) for _ in range(draw(st.integers(1, 3)))
    )
    order = new_order(new_order_id(at, draw(st.integers(0, 2**64 - 1))), draw(_names), items, at)
    later = at
    for event in draw(st.sampled_from([(), (Event.CANCEL,), (Event.START,),
                                       (Event.START, Event.SHIP), (Event.START, Event.FAIL),
                                       (Event.START, Event.FAIL, Event.RETRY)])):  # fmt: skip
        later += timedelta(microseconds=draw(st.integers(0, 10**7)))
        reason = draw(st.none() | _names)
        shipment = draw(_shipments) if event is Event.SHIP else None
        order = advance(order, event, later, reason, shipment)
    return order


@given(orders())
def test_a_row_reads_back_as_its_order_and_renders_its_json(order: Order) -> None:
    row = row_of(order)
    assert order_of(row) == order
    assert render(row) == msgspec.json.encode(order)
    assert last_reason(row) == order.history[-1].reason


@given(st.lists(orders(), max_size=4))
def test_a_page_renders_as_the_list_of_its_orders(page: list[Order]) -> None:
    assert render_many(row_of(order) for order in page) == msgspec.json.encode(page)


@given(orders(), _times)
def test_a_claim_writes_what_the_claimed_order_encodes_to(order: Order, at: datetime) -> None:
    if order.status is not OrderStatus.PENDING:
        return
    at = max(at, order.updated_at)
    row = claimed(row_of(order), claim_at(at))
    assert order_of(row) == advance(order, Event.START, at)
    assert render(row) == msgspec.json.encode(advance(order, Event.START, at))


def test_only_a_row_as_submitted_in_utc_with_microseconds_goes_without_a_tail() -> None:
    at = datetime(2026, 5, 1, 12, 0, 0, 1, tzinfo=UTC)
    fresh = new_order(new_order_id(at, 1), "Ada", (Item("Widget", 1),), at)
    assert row_of(fresh).tail is None
    whole_second = at.replace(microsecond=0)
    offset = at.astimezone(timezone(timedelta(hours=2)))
    for order in (
        new_order(new_order_id(whole_second, 1), "Ada", fresh.items, whole_second),
        new_order(new_order_id(at, 1), "Ada", fresh.items, offset),
        msgspec.structs.replace(fresh, history=(HistoryEntry(OrderStatus.PENDING, at, "why"),)),
        # the same instant, written another way, or a history that does not begin as pending
        msgspec.structs.replace(fresh, updated_at=offset),
        msgspec.structs.replace(fresh, history=(HistoryEntry(OrderStatus.PENDING, offset),)),
        msgspec.structs.replace(fresh, history=(HistoryEntry(OrderStatus.PROCESSING, at),)),
    ):
        row = row_of(order)
        assert row.tail is not None
        assert render(row) == msgspec.json.encode(order)
        assert order_of(row) == order


def test_sorted_ids_stay_sorted_and_sound_whatever_the_order_of_adds() -> None:
    rng = random.Random(7)
    ids = SortedIds(load=4)  # small sublists: splits and the positional index come soon
    added: list[str] = []
    for n in range(2000):
        value = f"{n:05d}" if rng.random() < 0.9 else f"{rng.randrange(n + 1):05d}x"
        ids.add(value)
        added.append(value)
        if n % 97 == 0:
            ids.index(added[rng.randrange(len(added))])  # builds the positional index
        if n % 131 == 0:
            ids.remove(added.pop(rng.randrange(len(added))))
    ids.check()
    assert list(ids) == sorted(added)
