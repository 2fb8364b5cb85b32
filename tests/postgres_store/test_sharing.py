"""What only a store shared by several processes does: leases, rescue, notifications, the
indexes behind the queries, and driver errors turned into ours."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from orderflow.domain import (
    Event,
    Item,
    OrderQuery,
    OrderStatus,
    micros_since_epoch,
    new_order,
    new_order_id,
)
from orderflow.errors import OrderConflict, StoreUnavailable
from orderflow.store import open_store
from orderflow.store.postgres import (
    _RESCUE_LOCK,
    CLAIM_SQL,
    WRITE_OUTCOMES_SQL,
    PostgresOrderStore,
    _translated,
)
from tests.postgres import same_schema, schema_store

T0 = datetime(2026, 3, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5, microseconds=7)


async def add_ready(store: PostgresOrderStore, count: int) -> list[str]:
    ids = []
    for n in range(count):
        at = T0 + timedelta(microseconds=n)
        order = new_order(new_order_id(at, n), f"c{n}", (Item("w", 1),), at)
        await store.add(order)
        ids.append(order.id)
    await store.claim_pending(T0 + timedelta(seconds=1), count)
    return ids


async def eventually(predicate, rounds: int = 500) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(rounds):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_an_expired_lease_is_rescued_once_and_the_old_holder_locked_out() -> None:
    async with schema_store() as store:
        [order_id] = await add_ready(store, 1)
        await store.heartbeat("dead", lease_s=0)  # every lease "dead" takes ends at once
        [held] = await store.acquire("dead", 1)
        async with store._connection() as other_rescuer, other_rescuer.transaction():
            await other_rescuer.execute("SELECT pg_advisory_xact_lock($1)", _RESCUE_LOCK)
            assert await store.rescue_orphans(LATER) == 0  # one rescuer at a time
        assert await store.rescue_orphans(LATER) == 1
        assert await store.rescue_orphans(LATER) == 0
        rescued = await store.get_order(order_id)
        assert rescued.status is OrderStatus.PROCESSING
        assert rescued.history[-1].reason == "rescued: the lease of dead ran out"
        assert rescued.history[-1].at == rescued.updated_at == LATER
        [again] = await store.acquire("alive", 1)
        assert again.id == held.id
        with pytest.raises(OrderConflict):
            await store.transition(order_id, Event.SHIP, T0, owner="dead")
        shipped = await store.transition(order_id, Event.SHIP, T0, owner="alive")
        assert [h.status for h in shipped.history].count(OrderStatus.SHIPPED) == 1


async def test_a_heartbeat_keeps_the_lease_alive() -> None:
    async with schema_store() as store:
        await add_ready(store, 2)
        await store.heartbeat("alive", lease_s=60)
        await store.acquire("alive", 2)
        await store.heartbeat("alive", lease_s=60)
        assert await store.rescue_orphans(LATER) == 0


async def test_handback_makes_an_order_ready_for_others_and_retire_lets_go() -> None:
    async with schema_store() as store:
        first, second = await add_ready(store, 2)
        await store.acquire("a", 2)
        handed = await store.transition(first, Event.HANDBACK, T0, "shutdown", owner="a")
        assert handed.status is OrderStatus.PROCESSING
        assert [o.id for o in await store.acquire("b", 5)] == [first]
        await store.retire("a", LATER)
        [again] = await store.acquire("b", 5)
        assert again.id == second
        assert again.history[-1].reason == "handed back: a stopped"
        assert again.history[-1].at == LATER


async def test_notifications_reach_other_processes() -> None:
    async with schema_store() as holder:
        ready: list[int] = []
        cancelled: list[str] = []
        await holder.subscribe(lambda: ready.append(1), cancelled.append)
        other = await same_schema(holder)
        try:
            [order_id] = await add_ready(other, 1)
            assert await eventually(lambda: bool(ready))
            await holder.acquire("holder", 1)
            await other.transition(order_id, Event.CANCEL, T0)
            assert await eventually(lambda: cancelled == [order_id])
        finally:
            await other.close()


async def test_a_holder_whose_order_was_rescued_is_told_to_stop_shipping_it() -> None:
    async with schema_store() as holder:
        told: list[str] = []
        await holder.subscribe(lambda: None, told.append)
        await holder.heartbeat("slow", lease_s=0)  # its leases lapse at once
        [order_id] = await add_ready(holder, 1)
        await holder.acquire("slow", 1)
        other = await same_schema(holder)
        try:
            assert await other.rescue_orphans(LATER) == 1
            [again] = await other.acquire("other", 1)
        finally:
            await other.close()
        await holder.heartbeat("slow", lease_s=60)  # the polling path: no notification for this
        assert told == [order_id]
        assert again.id == order_id
        await holder.heartbeat("slow", lease_s=60)
        assert told == [order_id]  # said once


async def test_a_statement_that_gets_no_answer_is_unavailable_not_a_hang() -> None:
    async with schema_store(command_timeout_s=0.2) as store, store._connection() as blocker:
        [order_id] = await add_ready(store, 1)
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", order_id)
            with pytest.raises(StoreUnavailable):
                await store.transition(order_id, Event.CANCEL, T0)
        assert (await store.get_order(order_id)).status is OrderStatus.PROCESSING


async def test_the_time_range_query_is_an_index_scan() -> None:
    rows = 200_000
    async with schema_store() as store, store._connection() as db:
        await db.execute(
            "INSERT INTO orders (id, customer, items, created_at, status, updated_at, history)"
            " SELECT $1::text || lpad(to_hex($2::bigint + n * 1000), 14, '0')"
            "  || lpad(to_hex(n), 16, '0'), 'c' || n, '[]', now(),"
            "  CASE WHEN n % 2 = 0 THEN 'pending' ELSE 'shipped' END, now(), $4::jsonb"
            " FROM generate_series(0, $3 - 1) AS n",
            "order_",
            micros_since_epoch(T0),
            rows,
            '[{"status": "pending", "at": "2026-01-01T00:00:00Z"}]',
        )
        await db.execute("ANALYZE orders")

        async def plan(sql: str, *args: object) -> str:
            return "\n".join(r[0] for r in await db.fetch("EXPLAIN " + sql, *args))

        # Big enough that the planner scans the table when no index helps...
        assert "Seq Scan" in await plan("SELECT * FROM orders WHERE customer = $1", "c7")
        # ...and yet every listing is an index lookup: a narrow range, the whole table, a status.
        middle = T0 + timedelta(milliseconds=rows // 2)
        ranges = [(middle, middle + timedelta(milliseconds=200)), (None, None), (T0, middle)]
        for start, end in ranges:
            for status in (None, OrderStatus.PENDING):
                query = OrderQuery(start=start, end=end, status=status)
                sql, args = store._list_sql(query)
                text = await plan(sql, *args)
                assert "Index" in text, text
                assert "Seq Scan" not in text, text
                assert "Sort" not in text, text
                page = await store.list_orders(query)
                assert len(page.orders) == 100
                assert all(o.status is (status or o.status) for o in page.orders)


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _plan_nodes(child)


async def test_claims_and_outcomes_read_only_their_rows_when_statistics_lag() -> None:
    """Regression: statistics taken while every order was pending made each claim batch walk
    every order claimed before it, and each outcome batch every processing order: a trigger of
    100k orders shipped at a third of the speed of 20k."""
    rows, claimed = 20_000, 18_000
    async with schema_store() as store, store._connection() as db:
        await db.execute(
            "INSERT INTO orders (id, customer, items, created_at, status, updated_at, history)"
            " SELECT $1::text || lpad(to_hex($2::bigint + n), 14, '0')"
            "  || lpad(to_hex(n), 16, '0'), 'c' || n, '[]', now(), 'pending', now(), '[]'"
            " FROM generate_series(0, $3 - 1) AS n",
            "order_",
            micros_since_epoch(T0),
            rows,
        )
        await db.execute("ANALYZE orders")
        # A burst of claims that the statistics have not seen yet, and a worker holding some.
        assert await store.claim_pending(T0, claimed) == claimed
        held = await store.acquire("worker", 100)

        async def wasted(sql: str, *args: object) -> int:
            """Rows the statement's scans read and threw away; its writes rolled back."""
            transaction = db.transaction()
            await transaction.start()
            try:
                [[plan]] = await db.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            finally:
                await transaction.rollback()
            nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
            assert all(n.get("Actual Rows", 0) <= 1000 for n in nodes if "Index" in n["Node Type"])
            return sum(n.get("Rows Removed by Filter", 0) for n in nodes)

        entry = '[{"status": "processing", "at": "2026-03-01T00:00:00.000001Z"}]'
        assert await wasted(CLAIM_SQL, T0, 1000, "order_g", entry) == 0
        outcomes = [[o.id for o in held], ["shipped"] * 100, [T0] * 100, [entry] * 100]
        assert await wasted(WRITE_OUTCOMES_SQL, *outcomes, [False] * 100, "worker") == 0


async def test_an_unreachable_database_is_unavailable_not_a_crash() -> None:
    with pytest.raises(StoreUnavailable):
        await open_store("postgresql://postgres@127.0.0.1:1/nowhere")


async def test_a_lost_pool_is_unavailable() -> None:
    async with schema_store() as store:
        await store._pool.close()
        with pytest.raises(StoreUnavailable):
            await store.find_order("order_x")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionResetError(),
    ],
)
def test_every_driver_error_is_unavailable(error: Exception) -> None:
    """Regression: a connection cut mid-statement surfaced as asyncpg's InternalClientError,
    which was not translated: a 500 for the request, and the end of the task that met it."""
    with pytest.raises(StoreUnavailable), _translated():
        raise error
