"""The minute counts and the instances of the OrderStore contract (store/base.py), checked
against every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orderflow.domain import (
    Event,
    Hold,
    Item,
    Order,
    OrderFilter,
    OrderStatus,
    Outcome,
    new_order,
    new_order_id,
)
from orderflow.store.base import Instance, InstanceBeat, MinuteCounts, OrderStore
from tests.backends import another_handle

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE_S = 15.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def order_at(seconds: float, entropy: int) -> Order:
    when = at(seconds)
    return new_order(new_order_id(when, entropy), "Ada", (Item("Widget", 1),), when)


async def held(store: OrderStore, orders: list[Order], owner: str = "a") -> dict[str, int]:
    """`orders` added, claimed and acquired by `owner`: id → token."""
    for order in orders:
        await store.add(order)
    await store.claim_pending(at(100), len(orders))
    return {h.order.id: h.token for h in await store.acquire(owner, len(orders), LEASE_S)}


# -- minutes --------------------------------------------------------------------------------------


async def test_minutes_count_submits_ships_and_failures_in_the_minute_of_each(
    store: OrderStore,
) -> None:
    orders = [order_at(10, 1), order_at(50, 2), order_at(70, 3), order_at(80, 4), order_at(90, 5)]
    tokens = await held(store, orders)
    a, b, c, d, e = (o.id for o in orders)
    written = await store.write_outcomes(
        "a",
        [
            Outcome(a, tokens[a], Event.SHIP, at(130)),
            Outcome(b, tokens[b], Event.FAIL, at(130), "no stock"),
            Outcome(c, tokens[c], Event.REATTEMPT, at(130), "busy"),  # counts nothing
            Outcome(e, tokens[e], Event.SHIP, at(250)),  # the same batch, a later minute
        ],
    )
    assert written == [True, True, True, True]
    await store.transition(d, Event.CANCEL, at(260))  # counts nothing
    await store.transition(b, Event.RETRY, at(270))  # neither
    assert await store.order_minutes(T0) == [
        MinuteCounts(minute(0), 2, 0, 0),
        MinuteCounts(minute(1), 3, 0, 0),
        MinuteCounts(minute(2), 0, 1, 1),
        MinuteCounts(minute(4), 0, 1, 0),
    ]


async def test_minutes_count_a_transition_to_shipped_or_failed(store: OrderStore) -> None:
    orders = [order_at(10, 1), order_at(11, 2)]
    tokens = await held(store, orders)
    await store.transition(orders[0].id, Event.SHIP, at(190), hold=Hold("a", tokens[orders[0].id]))
    await store.transition(orders[1].id, Event.FAIL, at(200), "lost")
    assert await store.order_minutes(T0) == [
        MinuteCounts(minute(0), 2, 0, 0),
        MinuteCounts(minute(3), 0, 1, 1),
    ]


async def test_minutes_start_with_the_minute_holding_since(store: OrderStore) -> None:
    for n, seconds in enumerate((5, 65, 125, 185)):
        await store.add(order_at(seconds, n))
    assert await store.order_minutes(at(119)) == [
        MinuteCounts(minute(1), 1, 0, 0),
        MinuteCounts(minute(2), 1, 0, 0),
        MinuteCounts(minute(3), 1, 0, 0),
    ]
    assert await store.order_minutes(at(3600)) == []


async def test_minutes_are_the_same_through_another_handle(store: OrderStore) -> None:
    """Every instance sharing a store answers the same counts."""
    other = await another_handle(store)
    try:
        await store.add(order_at(5, 1))
        await other.add(order_at(6, 2))
        expected = [MinuteCounts(minute(0), 2, 0, 0)]
        assert await other.order_minutes(T0) == expected
        assert await store.order_minutes(T0) == expected
    finally:
        if other is not store:
            await other.close()


async def test_prune_minutes_forgets_the_minutes_that_ended_before(store: OrderStore) -> None:
    for n, seconds in enumerate((5, 65, 300)):
        await store.add(order_at(seconds, n))
    assert await store.prune_minutes(at(120)) == 2
    assert await store.order_minutes(T0) == [MinuteCounts(minute(5), 1, 0, 0)]
    assert await store.prune_minutes(at(120)) == 0


async def test_bulk_cancel_counts_nothing(store: OrderStore) -> None:
    for n in range(3):
        await store.add(order_at(n, n))
    moved, _ = await store.transition_matching(
        Event.CANCEL, OrderStatus.PENDING, OrderFilter(), at(400), None, limit=10
    )
    assert len(moved) == 3
    assert await store.order_minutes(T0) == [MinuteCounts(minute(0), 3, 0, 0)]


# -- instances ------------------------------------------------------------------------------------


def beat(name: str, seconds: float, held: int = 0, in_flight: int = 0) -> InstanceBeat:
    return InstanceBeat(name, at(0), at(seconds), held, in_flight, at(seconds + 6))


async def test_instances_register_with_their_first_beat_and_list_live_first(
    store: OrderStore,
) -> None:
    assert await store.list_instances(at(0)) == []
    await store.heartbeat(beat("b", 1, held=3, in_flight=2))
    await store.heartbeat(beat("a", 1))
    await store.heartbeat(beat("c", 1))
    await store.heartbeat(beat("z", 2))
    await store.stop_instance("c", at(3))
    await store.heartbeat(beat("a", 5, held=1))  # a beat replaces the one before
    # At 8.5: z (last beat at 2) missed its beats; b (at 1) too; a beat at 5.
    assert await store.list_instances(at(8.5)) == [
        Instance("a", at(0), at(5), 1, 0, True),
        Instance("b", at(0), at(1), 3, 2, False),
        Instance("c", at(0), at(1), 0, 0, False),
        Instance("z", at(0), at(2), 0, 0, False),
    ]
    assert [i.live for i in await store.list_instances(at(4))] == [True, True, True, False]
    assert [i.name for i in await store.list_instances(at(4))] == ["a", "b", "z", "c"]


async def test_a_beat_after_a_stop_makes_an_instance_live_again(store: OrderStore) -> None:
    await store.heartbeat(beat("a", 1))
    await store.stop_instance("a", at(2))
    await store.stop_instance("unknown", at(2))  # nothing to stop: no error
    assert [i.live for i in await store.list_instances(at(3))] == [False]
    await store.heartbeat(beat("a", 4))
    assert await store.list_instances(at(5)) == [Instance("a", at(0), at(4), 0, 0, True)]


async def test_prune_instances_forgets_those_silent_since_before(store: OrderStore) -> None:
    await store.heartbeat(beat("old", 1))
    await store.heartbeat(beat("new", 100))
    assert await store.prune_instances(at(50)) == 1
    assert [i.name for i in await store.list_instances(at(101))] == ["new"]


async def test_instances_are_the_same_through_another_handle(store: OrderStore) -> None:
    other = await another_handle(store)
    try:
        await store.heartbeat(beat("a", 1, held=4))
        await other.heartbeat(beat("b", 1))
        expected = [
            Instance("a", at(0), at(1), 4, 0, True),
            Instance("b", at(0), at(1), 0, 0, True),
        ]
        assert await other.list_instances(at(2)) == expected
        assert await store.list_instances(at(2)) == expected
    finally:
        if other is not store:
            await other.close()
