"""What only a store shared by several processes does: holds with fencing tokens, leases that
are renewed or run out, rescue, retire, notifications, and driver errors turned into ours."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from orderflow.domain import Event, Hold, OrderStatus, Outcome
from orderflow.errors import IllegalTransition, NotHeld, OutcomeUnknown, StoreUnavailable
from orderflow.store import postgres_sql as sql
from orderflow.store.postgres import PostgresOrderStore
from orderflow.store.postgres_rows import translated
from tests.conftest import eventually
from tests.postgres import DATABASE_URL, same_schema, schema_store
from tests.postgres_store.conftest import LATER, T0, add_orders, add_ready

pytestmark = pytest.mark.postgres


async def test_an_expired_lease_is_rescued_once_and_the_old_holder_locked_out(
    store: PostgresOrderStore,
) -> None:
    [order_id] = await add_ready(store, 1)
    [held] = await store.acquire("dead", 1, lease_s=0)  # a lease that ends at once
    async with store.database.connection() as other_rescuer, other_rescuer.transaction():
        assert await other_rescuer.fetchval(sql.TRY_LOCK, sql.RESCUE_LOCK)
        assert await store.rescue_expired(LATER) == 0  # one rescuer at a time
    assert await store.rescue_expired(LATER) == 1
    assert await store.rescue_expired(LATER) == 0
    rescued = await store.get_order(order_id)
    assert rescued.status is OrderStatus.PROCESSING
    assert rescued.history[-1].reason == "rescued: the lease of dead ran out"
    assert rescued.history[-1].at == rescued.updated_at == LATER
    [again] = await store.acquire("alive", 1, lease_s=60)
    assert again.order.id == held.order.id
    assert again.token > held.token
    with pytest.raises(NotHeld):
        await store.transition(order_id, Event.SHIP, LATER, hold=Hold("dead", held.token))
    shipped = await store.transition(order_id, Event.SHIP, LATER, hold=Hold("alive", again.token))
    assert [h.status for h in shipped.history].count(OrderStatus.SHIPPED) == 1


async def test_a_rescuer_paused_inside_its_transaction_blocks_rescue_only_for_a_moment() -> None:
    """A process stopped between the statements of a rescue keeps its advisory lock while its
    session lives: PostgreSQL ends a session idle in a transaction, and the rescue goes on."""
    async with schema_store(idle_transaction_timeout_s=0.5) as store:
        [order_id] = await add_ready(store, 1)
        await store.acquire("dead", 1, lease_s=0)
        paused = await asyncpg.connect(DATABASE_URL, server_settings=store.server_settings)
        try:
            await paused.execute("BEGIN")
            assert await paused.fetchval(sql.TRY_LOCK, sql.RESCUE_LOCK)
            assert await store.rescue_expired(LATER) == 0  # the paused one is rescuing
            assert await eventually(lambda: store.rescue_expired(LATER)) == 1
            assert (await store.get_order(order_id)).history[-1].reason == (
                "rescued: the lease of dead ran out"
            )
        finally:
            await paused.close(timeout=1)


async def test_a_stale_token_is_refused_even_for_the_same_owner(store: PostgresOrderStore) -> None:
    """The token, not the owner's name, is the hold: an owner whose order was rescued and that
    acquired it again must not finish it under the first hold."""
    [order_id] = await add_ready(store, 1)
    [first] = await store.acquire("same", 1, lease_s=0)
    assert await store.rescue_expired(LATER) == 1
    [second] = await store.acquire("same", 1, lease_s=60)
    assert second.token > first.token
    stale = Outcome(order_id, first.token, Event.SHIP, LATER, shipment={"by": "first"})
    assert await store.write_outcomes("same", [stale]) == [False]
    with pytest.raises(NotHeld):
        await store.transition(order_id, Event.FAIL, LATER, "late", hold=Hold("same", first.token))
    fresh = Outcome(order_id, second.token, Event.SHIP, LATER, shipment={"by": "second"})
    assert await store.write_outcomes("same", [fresh]) == [True]
    written = await store.get_order(order_id)
    assert (written.status, written.shipment) == (OrderStatus.SHIPPED, {"by": "second"})


async def test_a_renewed_lease_is_not_rescued_and_renew_says_what_is_no_longer_held(
    store: PostgresOrderStore,
) -> None:
    first, second, third, fourth = await add_ready(store, 4)
    [dead] = await store.acquire("dead", 1, lease_s=0)  # leases that end at once...
    held = {h.order.id: h.token for h in await store.acquire("alive", 3, lease_s=0)}
    assert dead.order.id == first
    assert await store.renew("alive", held, lease_s=60, at=LATER) == set()  # ...unless renewed
    assert await store.rescue_expired(LATER) == 1
    assert (await store.get_order(first)).history[-1].reason == "rescued: the lease of dead ran out"
    await store.write_outcomes("alive", [Outcome(second, held[second], Event.SHIP, LATER)])
    await store.transition(third, Event.CANCEL, LATER)
    assert await store.renew("alive", held, lease_s=60, at=LATER) == {second, third}
    assert await store.renew("alive", {fourth: held[fourth]}, lease_s=60, at=LATER) == set()
    assert (await store.get_order(fourth)).history[-1].status is OrderStatus.PROCESSING
    assert await store.rescue_expired(LATER) == 0


async def test_renew_hands_back_what_its_owner_holds_without_knowing(
    store: PostgresOrderStore,
) -> None:
    """An acquire whose answer was lost: the owner holds orders it does not know of. Its next
    renewal names only what it knows, and the rest is ready again at once."""
    await add_ready(store, 2)
    known, unknown = await store.acquire("forgetful", 2, lease_s=60)
    lost = await store.renew("forgetful", {known.order.id: known.token}, lease_s=60, at=LATER)
    assert lost == set()
    handed_back = await store.get_order(unknown.order.id)
    assert handed_back.status is OrderStatus.PROCESSING
    assert handed_back.history[-1].reason == "handed back: forgetful lost track of it"
    [taken] = await store.acquire("other", 5, lease_s=60)
    assert taken.order.id == unknown.order.id


async def test_handback_makes_an_order_ready_for_others_and_retire_lets_go(
    store: PostgresOrderStore,
) -> None:
    first, second = await add_ready(store, 2)
    holds = {h.order.id: h.token for h in await store.acquire("a", 2, lease_s=60)}
    handed = await store.transition(
        first, Event.HANDBACK, T0, "shutdown", hold=Hold("a", holds[first])
    )
    assert handed.status is OrderStatus.PROCESSING
    assert [h.order.id for h in await store.acquire("b", 5, lease_s=60)] == [first]
    assert await store.retire("a", LATER) == 1
    assert await store.retire("a", LATER) == 0
    [again] = await store.acquire("b", 5, lease_s=60)
    assert again.order.id == second
    assert again.order.history[-1].reason == "handed back: a stopped"
    assert again.order.history[-1].at == LATER


async def test_notifications_reach_other_processes(store: PostgresOrderStore) -> None:
    ready: list[int] = []
    cancelled: list[str] = []
    await store.subscribe(lambda: ready.append(1), cancelled.append)
    other = await same_schema(store)
    try:
        [order_id] = await add_ready(other, 1)
        await eventually(lambda: ready)
        await store.acquire("holder", 1, lease_s=60)
        await other.transition(order_id, Event.CANCEL, T0)
        await eventually(lambda: cancelled == [order_id])
    finally:
        await other.close()


async def test_a_holder_whose_order_was_rescued_learns_it_at_its_next_renewal(
    store: PostgresOrderStore,
) -> None:
    [order_id] = await add_ready(store, 1)
    [held] = await store.acquire("slow", 1, lease_s=0)  # its lease lapses at once
    other = await same_schema(store)
    try:
        assert await other.rescue_expired(LATER) == 1
        [again] = await other.acquire("other", 1, lease_s=60)
    finally:
        await other.close()
    assert again.order.id == order_id
    holds = {order_id: held.token}
    assert await store.renew("slow", holds, lease_s=60, at=LATER) == {order_id}
    later = LATER + timedelta(seconds=1)
    assert await store.renew("slow", {}, lease_s=60, at=later) == set()  # said once
    assert (await store.get_order(order_id)).history[-1].reason == (
        "rescued: the lease of slow ran out"
    )


async def test_a_statement_that_gets_no_answer_is_unavailable_not_a_hang() -> None:
    async with schema_store(command_timeout_s=0.2) as store, store.database.connection() as blocker:
        [order_id] = await add_ready(store, 1)
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", order_id)
            with pytest.raises(StoreUnavailable):
                await store.transition(order_id, Event.CANCEL, T0)
        assert (await store.get_order(order_id)).status is OrderStatus.PROCESSING


async def test_an_unreachable_database_is_unavailable_not_a_crash() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresOrderStore.connect("postgresql://postgres@127.0.0.1:1/nowhere")
    assert not isinstance(caught.value, OutcomeUnknown)


async def test_a_lost_pool_is_unavailable(store: PostgresOrderStore) -> None:
    await store.database.pool.close()
    with pytest.raises(StoreUnavailable):
        await store.find_order("order_x")


CONNECTION_LOST = [
    asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("connection is closed"),
    ConnectionResetError(),
    TimeoutError(),
]


@pytest.mark.parametrize("error", CONNECTION_LOST, ids=lambda e: type(e).__name__)
def test_every_driver_error_is_unavailable(error: Exception) -> None:
    """Regression: a connection cut mid-statement surfaced as asyncpg's InternalClientError,
    which was not translated: a 500 for the request, and the end of the task that met it."""
    with pytest.raises(StoreUnavailable) as caught, translated():
        raise error
    assert not isinstance(caught.value, OutcomeUnknown)


@pytest.mark.parametrize("error", CONNECTION_LOST, ids=lambda e: type(e).__name__)
def test_a_connection_lost_during_a_change_leaves_its_outcome_unknown(error: Exception) -> None:
    with pytest.raises(OutcomeUnknown), translated(changing=True):
        raise error


def test_a_refusal_by_the_server_is_unavailable_even_during_a_change() -> None:
    """The server refused the statement: it did not run, so the outcome is known."""
    with pytest.raises(StoreUnavailable) as caught, translated(changing=True):
        raise asyncpg.exceptions.SerializationError("could not serialize access")
    assert not isinstance(caught.value, OutcomeUnknown)


async def test_counts_wait_for_a_numbering_under_way_and_include_own_writes(
    store: PostgresOrderStore,
) -> None:
    """Counts are folded in by whoever numbers the events; while another instance does, the
    counts wait for it (trying again) rather than answer without this process's own last
    write."""
    other = await asyncpg.connect(DATABASE_URL, server_settings=store.server_settings)
    try:
        numbering = other.transaction()
        await numbering.start()
        assert await other.fetchval(sql.TRY_LOCK, sql.SEQUENCE_LOCK)  # another is numbering
        [order_id] = await add_orders(store, 1)
        counting = asyncio.create_task(store.count_by_status())
        await asyncio.sleep(0.1)  # a few tries of the lock (it waits up to 2 s)
        assert not counting.done()
        await numbering.rollback()
        counts = await counting
    finally:
        await other.close()
    assert counts[OrderStatus.PENDING] == 1, order_id


async def test_a_delete_that_waited_on_a_claim_leaves_the_claimed_order_alone(
    store: PostgresOrderStore,
) -> None:
    """Regression: the delete read the order's status before it waited for the row, so a delete
    that waited on another instance's claim deleted the order it had just claimed (its event
    said pending, and the counts drifted one off a recount). It reads the row it locks now."""
    [order_id] = await add_orders(store, 1)
    async with store.database.connection() as claimer, claimer.transaction():
        await claimer.execute(
            "UPDATE orders SET status = 'processing' WHERE id = $1", order_id
        )  # another instance's claim, not committed yet
        deleting = asyncio.create_task(store.delete_pending(order_id, LATER))
        await eventually(lambda: _waits_on_a_lock(store))
    with pytest.raises(IllegalTransition, match="this one is processing"):
        await deleting
    assert (await store.get_order(order_id)).status is OrderStatus.PROCESSING


async def _waits_on_a_lock(store: PostgresOrderStore) -> bool:
    async with store.database.connection() as db:
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%DELETE FROM orders%'"
        )
    return bool(waiting)


async def test_stores_in_other_schemas_number_and_rescue_without_waiting_for_each_other(
    store: PostgresOrderStore,
) -> None:
    """Regression: the advisory locks of numbering and rescue were keyed by a constant alone, so
    a numbering in one schema of a database made a store in another schema answer "another
    instance is numbering" (-1), and a conformance test that numbered once read no events."""
    await add_ready(store, 1)
    await store.acquire("dead", 1, lease_s=0)  # a lease that ends at once
    async with (
        schema_store() as elsewhere,
        elsewhere.database.connection() as busy,
        busy.transaction(),
    ):
        assert await busy.fetchval(sql.TRY_LOCK, sql.SEQUENCE_LOCK)
        assert await busy.fetchval(sql.TRY_LOCK, sql.RESCUE_LOCK)
        assert await store.sequence_events() > 0
        assert await store.rescue_expired(LATER) == 1
        async with elsewhere.database.connection() as neighbour:  # its own schema's: taken
            assert not await neighbour.fetchval(sql.TRY_LOCK, sql.SEQUENCE_LOCK)
