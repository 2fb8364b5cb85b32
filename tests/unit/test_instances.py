"""A processor registers in its store at start, beats with what it holds and ships, and says
when it stops; the in-memory store's minute ring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orderflow.domain import minute_of
from orderflow.store.base import Instance, MinuteCounts
from orderflow.store.memory import InMemoryOrderStore
from orderflow.store.memory_history import FAILED, SHIPPED, SUBMITTED, MinuteRing
from tests.conftest import FakeShipper, ManualClock, eventually, settled
from tests.helpers import submit_many
from tests.unit.conftest import StartService


async def test_a_processor_is_listed_live_once_started(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    service = await start_service(heartbeat_s=3600.0, lease_s=10_800.0)
    [me] = await memory_store.list_instances(clock.now())
    assert (me.name, me.held, me.in_flight, me.live) == (service.processor.owner, 0, 0, True)
    assert me.started_at == me.last_heartbeat


async def test_heartbeats_carry_the_orders_held_and_in_flight(
    start_service: StartService,
    memory_store: InMemoryOrderStore,
    shipper: FakeShipper,
    clock: ManualClock,
) -> None:
    shipper.hold = True
    service = await start_service(concurrency=2, heartbeat_s=0.01, lease_s=0.03)
    ids = await submit_many(service, 3)
    await service.trigger_processing()
    for order_id in ids[:2]:
        await shipper.started_event(order_id).wait()

    async def beat_seen() -> Instance | None:
        [me] = await memory_store.list_instances(clock.now())
        return me if (me.held, me.in_flight) == (3, 2) else None

    assert (await eventually(beat_seen)).live
    for order_id in ids:
        shipper.release(order_id)
    await settled(memory_store)


async def test_a_clean_stop_lists_the_processor_not_live(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    service = await start_service()
    await service.stop(grace_s=0)
    [me] = await memory_store.list_instances(clock.now())
    assert (me.name, me.live) == (service.processor.owner, False)


async def test_a_processor_that_misses_three_beats_is_not_live(
    start_service: StartService, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    await start_service(heartbeat_s=3600.0, lease_s=10_800.0)
    clock.advance(3 * 3600 - 1)
    assert [i.live for i in await memory_store.list_instances(clock.now())] == [True]
    clock.advance(2)
    assert [i.live for i in await memory_store.list_instances(clock.now())] == [False]


# -- the minute ring ------------------------------------------------------------------------------

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def test_the_ring_reuses_a_slot_for_a_newer_minute_and_ignores_an_older_one() -> None:
    ring = MinuteRing(size=4)
    first = minute_of(T0)
    ring.count(first, SUBMITTED, 2)
    ring.count(first + 1, SHIPPED)
    ring.count(first + 4, FAILED)  # the slot of `first`, a ring later: `first` is gone
    ring.count(first, SUBMITTED)  # older than what the slot holds now: not counted
    assert ring.since(first) == [
        MinuteCounts(minute(1), 0, 1, 0),
        MinuteCounts(minute(4), 0, 0, 1),
    ]


def test_the_ring_prunes_the_minutes_before() -> None:
    ring = MinuteRing()
    first = minute_of(T0)
    for n in range(5):
        ring.count(first + n, SUBMITTED)
    assert ring.prune(first + 3) == 3
    assert ring.since(0) == [MinuteCounts(minute(3), 1, 0, 0), MinuteCounts(minute(4), 1, 0, 0)]
