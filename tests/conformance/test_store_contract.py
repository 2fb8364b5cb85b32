"""The OrderStore contract (store/base.py), checked against every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orderflow.domain import (
    Event,
    Item,
    Order,
    OrderQuery,
    OrderStatus,
    new_order,
    new_order_id,
)
from orderflow.errors import IllegalTransition, OrderConflict, OrderNotFound
from orderflow.store.base import OrderStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def order_at(seconds: float, entropy: int = 0, customer: str = "Ada") -> Order:
    when = at(seconds)
    items = (Item("Widget", 2), Item("Gadget", 1))
    return new_order(new_order_id(when, entropy), customer, items, when)


async def add_many(store: OrderStore, count: int) -> list[Order]:
    orders = [order_at(n, entropy=n, customer=f"c{n}") for n in range(count)]
    for order in orders:
        await store.add(order)
    return orders


async def test_added_order_reads_back_equal(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    assert await store.get_order(order.id) == order
    assert await store.find_order(order.id) == order


async def test_unknown_id_is_not_found(store: OrderStore) -> None:
    assert await store.find_order("order_" + "0" * 30) is None
    with pytest.raises(OrderNotFound):
        await store.get_order("nope")


async def test_ids_are_never_reused(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    with pytest.raises(OrderConflict):
        await store.add(order_at(1))


async def test_list_is_sorted_and_bounded(store: OrderStore) -> None:
    orders = await add_many(store, 10)
    page = await store.list_orders(OrderQuery(start=at(2), end=at(7)))
    assert [o.id for o in page.orders] == [o.id for o in orders[2:7]]
    assert page.next_cursor is None
    everything = await store.list_orders(OrderQuery())
    assert [o.id for o in everything.orders] == [o.id for o in orders]


async def test_from_is_inclusive_and_to_exclusive_to_the_microsecond(store: OrderStore) -> None:
    order = order_at(5)
    await store.add(order)
    tick = timedelta(microseconds=1)
    for start, end, expected in [
        (at(5), at(5) + tick, [order.id]),
        (at(5) + tick, None, []),
        (None, at(5), []),
        (at(5), at(5), []),
    ]:
        page = await store.list_orders(OrderQuery(start=start, end=end))
        assert [o.id for o in page.orders] == expected


async def test_paging_with_the_cursor_visits_every_order_once(store: OrderStore) -> None:
    orders = await add_many(store, 23)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await store.list_orders(OrderQuery(limit=5, cursor=cursor, start=at(1)))
        seen += [o.id for o in page.orders]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [o.id for o in orders[1:]]


async def test_cursor_before_the_range_start_is_harmless(store: OrderStore) -> None:
    orders = await add_many(store, 5)
    page = await store.list_orders(OrderQuery(start=at(3), cursor=orders[0].id))
    assert [o.id for o in page.orders] == [o.id for o in orders[3:]]


async def test_status_filter(store: OrderStore) -> None:
    orders = await add_many(store, 6)
    await store.transition(orders[1].id, Event.CANCEL, at(100))
    await store.transition(orders[4].id, Event.CANCEL, at(100))
    await store.claim_pending(at(100), 1)  # orders[0] → processing
    for status, expected in [
        (OrderStatus.CANCELLED, [orders[1], orders[4]]),
        (OrderStatus.PROCESSING, [orders[0]]),
        (OrderStatus.PENDING, [orders[2], orders[3], orders[5]]),
        (OrderStatus.SHIPPED, []),
    ]:
        page = await store.list_orders(OrderQuery(status=status, limit=2))
        assert [o.id for o in page.orders] == [o.id for o in expected[:2]]
        assert (page.next_cursor is not None) == (len(expected) > 2)


async def test_delete_only_pending(store: OrderStore) -> None:
    pending, cancelled = order_at(1), order_at(2)
    await store.add(pending)
    await store.add(cancelled)
    await store.transition(cancelled.id, Event.CANCEL, at(3))
    await store.delete_pending(pending.id)
    assert await store.find_order(pending.id) is None
    with pytest.raises(OrderConflict):
        await store.delete_pending(cancelled.id)
    with pytest.raises(OrderNotFound):
        await store.delete_pending(pending.id)
    assert (await store.list_orders(OrderQuery())).orders == [await store.get_order(cancelled.id)]


async def test_transition_appends_history(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    cancelled = await store.transition(order.id, Event.CANCEL, at(2), "changed my mind")
    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.updated_at == at(2)
    assert cancelled.history[-1].reason == "changed my mind"
    assert await store.get_order(order.id) == cancelled


async def test_illegal_transition_changes_nothing(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    with pytest.raises(IllegalTransition):
        await store.transition(order.id, Event.SHIP, at(2))
    with pytest.raises(OrderNotFound):
        await store.transition("order_" + "1" * 30, Event.CANCEL, at(2))
    assert await store.get_order(order.id) == order


async def test_claim_moves_the_oldest_pending_first(store: OrderStore) -> None:
    orders = await add_many(store, 5)
    assert await store.claim_pending(at(50), 2) == 2
    assert await store.claim_pending(at(51), 10, created_before=at(4)) == 2
    statuses = [(await store.get_order(o.id)).status for o in orders]
    assert statuses == [OrderStatus.PROCESSING] * 4 + [OrderStatus.PENDING]
    assert (await store.get_order(orders[0].id)).history[-1].at == at(50)
    assert await store.claim_pending(at(52), 10, created_before=at(4)) == 0


async def test_acquire_hands_each_ready_order_to_one_owner(store: OrderStore) -> None:
    orders = await add_many(store, 4)
    await store.claim_pending(at(10), 10)
    first = await store.acquire("a", 3)
    second = await store.acquire("b", 3)
    assert [o.id for o in first] == [o.id for o in orders[:3]]
    assert [o.id for o in second] == [orders[3].id]
    assert await store.acquire("c", 3) == []
    assert all(o.status is OrderStatus.PROCESSING for o in first + second)


async def test_completion_is_owner_checked(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    await store.claim_pending(at(2), 1)
    [held] = await store.acquire("a", 1)
    with pytest.raises(OrderConflict):
        await store.transition(held.id, Event.SHIP, at(3), owner="b")
    retried = await store.transition(held.id, Event.RETRY, at(3), "try again", owner="a")
    assert retried.status is OrderStatus.PROCESSING
    shipped = await store.transition(held.id, Event.SHIP, at(4), owner="a")
    assert shipped.status is OrderStatus.SHIPPED
    with pytest.raises(IllegalTransition):
        await store.transition(held.id, Event.SHIP, at(5), owner="a")


async def test_a_cancel_beats_a_late_finisher(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    await store.claim_pending(at(2), 1)
    await store.acquire("a", 1)
    await store.transition(order.id, Event.CANCEL, at(3))
    with pytest.raises(IllegalTransition):
        await store.transition(order.id, Event.SHIP, at(4), owner="a")
    assert (await store.get_order(order.id)).status is OrderStatus.CANCELLED


async def test_released_order_can_be_claimed_and_acquired_again(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    await store.claim_pending(at(2), 1)
    await store.acquire("a", 1)
    back = await store.transition(order.id, Event.RELEASE, at(3), "shutdown", owner="a")
    assert back.status is OrderStatus.PENDING
    assert await store.acquire("b", 1) == []
    assert await store.claim_pending(at(4), 1) == 1
    [again] = await store.acquire("b", 1)
    assert again.id == order.id
    assert await store.acquire("c", 1) == []


async def test_count_by_status(store: OrderStore) -> None:
    orders = await add_many(store, 5)
    await store.transition(orders[0].id, Event.CANCEL, at(9))
    await store.claim_pending(at(9), 2)
    counts = await store.count_by_status()
    assert counts.get(OrderStatus.PENDING) == 2
    assert counts.get(OrderStatus.PROCESSING) == 2
    assert counts.get(OrderStatus.CANCELLED) == 1
    assert not counts.get(OrderStatus.SHIPPED)


async def test_sharing_hooks_are_safe_to_call(store: OrderStore) -> None:
    await store.subscribe(lambda: None, lambda order_id: None)
    await store.heartbeat("a", 15.0)
    assert await store.rescue_orphans(at(1)) == 0
    await store.retire("a", at(2))


async def test_transition_many_writes_what_the_owner_still_holds(store: OrderStore) -> None:
    orders = await add_many(store, 4)
    await store.claim_pending(at(10), 4)
    await store.acquire("a", 3)  # orders[3] stays ready, held by nobody
    await store.transition(orders[1].id, Event.CANCEL, at(11))
    results = await store.transition_many(
        "a",
        [
            (orders[0].id, Event.SHIP, at(12), None),
            (orders[1].id, Event.SHIP, at(12), None),
            (orders[2].id, Event.RETRY, at(12), "again"),
            (orders[3].id, Event.FAIL, at(12), "x"),
        ],
    )
    assert [None if r is None else r.status for r in results] == [
        OrderStatus.SHIPPED,
        None,
        OrderStatus.PROCESSING,
        None,
    ]
    assert (await store.get_order(orders[1].id)).status is OrderStatus.CANCELLED
    shipped = await store.transition(orders[2].id, Event.SHIP, at(13), owner="a")
    assert shipped.history[-2].reason == "again"
    handed = await store.transition_many("a", [])
    assert handed == []
