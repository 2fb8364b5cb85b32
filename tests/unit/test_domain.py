from __future__ import annotations

import ast
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

import orderflow.domain as domain
from orderflow.domain import (
    Event,
    Item,
    OrderStatus,
    advance,
    can_delete,
    is_order_id,
    is_terminal,
    new_order,
    new_order_id,
    next_status,
    order_id_floor,
    order_id_time,
)
from orderflow.errors import IllegalTransition

ALLOWED = {
    (OrderStatus.PENDING, Event.START): OrderStatus.PROCESSING,
    (OrderStatus.PENDING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.SHIP): OrderStatus.SHIPPED,
    (OrderStatus.PROCESSING, Event.FAIL): OrderStatus.FAILED,
    (OrderStatus.PROCESSING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.RELEASE): OrderStatus.PENDING,
    (OrderStatus.PROCESSING, Event.RETRY): OrderStatus.PROCESSING,
    (OrderStatus.PROCESSING, Event.HANDBACK): OrderStatus.PROCESSING,
}


@pytest.mark.parametrize("status", list(OrderStatus))
@pytest.mark.parametrize("event", list(Event))
def test_next_status_allows_exactly_the_table(status: OrderStatus, event: Event) -> None:
    if (status, event) in ALLOWED:
        assert next_status(status, event) is ALLOWED[status, event]
    else:
        with pytest.raises(IllegalTransition, match=event.value):
            next_status(status, event)


def test_terminal_statuses_accept_no_event() -> None:
    for status in OrderStatus:
        assert is_terminal(status) == all((status, e) not in ALLOWED for e in Event)


def test_only_pending_orders_can_be_deleted() -> None:
    assert [s for s in OrderStatus if can_delete(s)] == [OrderStatus.PENDING]


def test_advance_appends_history_and_moves_updated_at() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    order = new_order(new_order_id(at, 7), "Ada", (Item("Widget", 1),), at)
    later = at + timedelta(seconds=3)
    moved = advance(order, Event.START, later)
    failed = advance(moved, Event.FAIL, later, "timeout")
    assert [h.status for h in failed.history] == ["pending", "processing", "failed"]
    assert failed.history[-1].reason == "timeout"
    assert failed.updated_at == later
    assert failed.timestamp == at
    assert order.status is OrderStatus.PENDING  # the original is untouched


def test_ids_sort_by_time_then_entropy() -> None:
    base = datetime(2026, 5, 1, tzinfo=UTC)
    times = [base + timedelta(microseconds=n) for n in (5, 1, 3, 1_000_000, 2)]
    ids = [new_order_id(t, 2**64 - 1 - n) for n, t in enumerate(times)]
    assert sorted(ids) == [i for _, i in sorted(zip(times, ids, strict=True))]
    for at, order_id in zip(times, ids, strict=True):
        assert is_order_id(order_id)
        assert order_id_time(order_id) == at
        assert order_id_floor(at) <= order_id < order_id_floor(at + timedelta(microseconds=1))


def test_id_floor_clamps_outside_the_id_range() -> None:
    assert order_id_floor(datetime(1900, 1, 1, tzinfo=UTC)) == "order_" + "0" * 30
    far = order_id_floor(datetime(9999, 1, 1, tzinfo=UTC))
    assert is_order_id(far)
    assert far > new_order_id(datetime(4000, 1, 1, tzinfo=UTC), 2**64 - 1)


@pytest.mark.parametrize(
    "value", ["", "order_", "order_" + "g" * 30, "ORDER_" + "0" * 30, "order_" + "0" * 29, "x"]
)
def test_is_order_id_rejects_malformed(value: str) -> None:
    assert not is_order_id(value)


def test_item_trims_and_validates_names() -> None:
    item = msgspec.json.decode(b'{"name": "  Bar  ", "quantity": 3}', type=Item)
    assert item.name == "Bar"
    for bad in (b'{"name": "   ", "quantity": 1}', b'{"name": "x", "quantity": "2"}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=Item)


def test_domain_module_is_pure() -> None:
    """domain.py imports no I/O, event loop, driver or web framework."""
    tree = ast.parse(Path(domain.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    allowed = {"__future__", "datetime", "enum", "re", "typing", "msgspec", "orderflow.errors"}
    assert imported <= allowed, imported - allowed
    assert "asyncio" not in sys.modules or "asyncio" not in imported


def test_every_event_has_one_target_and_its_sources() -> None:
    from orderflow.domain import sources_of, target_of

    for event in Event:
        for source in sources_of(event):
            assert next_status(source, event) is target_of(event)
    assert set(sources_of(Event.CANCEL)) == {OrderStatus.PENDING, OrderStatus.PROCESSING}
