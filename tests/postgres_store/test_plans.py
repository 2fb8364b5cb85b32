"""The indexes behind every statement of `postgres_sql`: no statement scans the orders or the
events, however many there are, and the hot ones read only their own rows even while the
planner's statistics still describe the table as it was before a burst of claims."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from orderflow.domain import OrderQuery, OrderStatus, micros_since_epoch, prefix_end
from orderflow.store import postgres_sql as sql
from orderflow.store.postgres import PostgresOrderStore
from tests.helpers import assert_searches_page_alike
from tests.postgres import schema_store
from tests.postgres_store.conftest import LATER, T0

# One event loop for the module, so that every test can use the one big store.
pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

ROWS = 200_000
OWNER = "worker-1"
_VERBS = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE")
SQL_STATEMENTS = {
    name: value
    for name, value in vars(sql).items()
    if name.isupper()
    and not name.startswith("_")  # parts of statements
    and isinstance(value, str)
    and value.lstrip().upper().startswith(_VERBS)
}
ENTRY = '[{"status": "processing", "at": "2026-03-01T00:00:05Z"}]'
AT_TEXT = "2026-03-01T00:00:05.000007Z"


def order_id(n: int) -> str:
    """The id of the n-th order FILL_ORDERS makes (one a millisecond from T0)."""
    return f"order_{micros_since_epoch(T0) + n * 1000:014x}{n:016x}"


# The n-th order's status, by n % 100: mostly shipped, as in a service that has run a while.
FILL_ORDERS = """
INSERT INTO orders (id, customer, items, created_at, status, updated_at, history, owner,
                    attempt, lease_expires_at, customer_key)
SELECT 'order_' || lpad(to_hex($1::bigint + n * 1000), 14, '0') || lpad(to_hex(n), 16, '0'),
       'C' || n, '[{"name": "w", "quantity": 1}]', now(), s.status, now(),
       jsonb_build_array(jsonb_build_object('status', s.status, 'at', '2026-03-01T00:00:00Z',
                                            'reason', s.reason)),
       s.owner, CASE WHEN s.owner IS NULL THEN 0 ELSE 1 END,
       CASE WHEN s.owner IS NULL THEN NULL ELSE now() + interval '1 hour' END, 'c' || n
FROM generate_series(0, $2 - 1) AS n,
LATERAL (SELECT CASE WHEN n % 100 < 80 THEN 'shipped' WHEN n % 100 < 90 THEN 'failed'
                     WHEN n % 100 < 95 THEN 'pending' WHEN n % 100 < 97 THEN 'cancelled'
                     ELSE 'processing' END AS status,
                CASE WHEN n % 100 BETWEEN 80 AND 84 THEN 'timeout'
                     WHEN n % 100 BETWEEN 85 AND 89 THEN 'carrier down' END AS reason,
                CASE WHEN n % 100 >= 98 THEN 'worker-' || (n % 7) END AS owner) AS s
"""
# Events in batches of 100, as statements write them; the last batch not numbered yet.
FILL_EVENTS = """
WITH batches AS (INSERT INTO event_batches (id, seq, size)
    SELECT b, CASE WHEN b < $2 / 100 THEN b * 100 END, 100 FROM generate_series(1, $2 / 100) AS b)
INSERT INTO events (batch, pos, type, order_id, status, at)
SELECT n / 100 + 1, n % 100 + 1, 'order.submitted', 'order_' || lpad(to_hex(n), 30, '0'),
       'pending', $1::timestamptz + n * interval '1 millisecond'
FROM generate_series(0, $2 - 1) AS n
"""


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def scans_of_orders_or_events(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        node
        for node in nodes
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in ("orders", "events")
    ]


def statement_args(store: PostgresOrderStore) -> dict[str, list[Any]]:
    """Representative arguments for every statement, over the table `fill` made."""
    middle = ROWS // 2
    held = [order_id(n) for n in range(middle, middle + 2000) if n % 7 == 1 and n % 100 >= 98]
    shipped_entry = '[{"status": "shipped", "at": "2026-03-01T00:00:05Z"}]'
    listing = store.list_statement(
        OrderQuery(start=T0 + timedelta(seconds=middle // 1000), end=LATER + timedelta(hours=1))
    )
    by_status = store.list_statement(OrderQuery(status=OrderStatus.PENDING))
    count = len(held)
    bulk = [
        "failed", "", sql.ABOVE_ALL_IDS, "", 1000, "timeout", "pending",
        '[{"status": "pending", "at": "2026-03-01T00:00:05Z"}]', 10_000, LATER,
        "order.retried", "retried in bulk", False, "c1",
    ]  # fmt: skip
    return {
        "INSERT_ORDER": [
            order_id(ROWS + 1), "c", '[{"name": "w", "quantity": 1}]', LATER, "pending", LATER,
            '[{"status": "pending", "at": "2026-03-01T00:00:05Z"}]', None, "key-1", "print",
            LATER, "c",
        ],
        "FIND_IDEMPOTENCY": ["key-1"],
        "PRUNE_IDEMPOTENCY": [T0, 10_000],
        "FIND_ORDER": [order_id(middle)],
        "LIST_ORDERS": listing[1],
        "LIST_ORDERS_BY_STATUS": by_status[1],
        "DELETE_PENDING": [order_id(middle + 90), LATER],
        "TRANSITION": [
            order_id(middle + 98), "cancelled", LATER, ENTRY, False, ["pending", "processing"],
            None, None, "order.cancelled", "by a test", True, False,
        ],
        "WRITE_OUTCOMES": [
            held, [1] * count, ["shipped"] * count, [LATER] * count, [shipped_entry] * count,
            [False] * count, ["order.shipped"] * count, [None] * count, [None] * count, OWNER,
        ],
        "CLAIM": [LATER, 1000, sql.ABOVE_ALL_IDS, ENTRY, order_id(middle)],
        "ACQUIRE": ["worker-new", 100, 30.0],
        "RENEW": [OWNER, held, [1] * count, 30.0, LATER, AT_TEXT],
        "RESCUE": [LATER, AT_TEXT],
        "RETIRE": [LATER, AT_TEXT, OWNER],
        "TRANSITION_MATCHING": bulk,
        "TRANSITION_MATCHING_DRY": bulk,
        "PING": [],
        "NOTIFY": ["orderflow_test", ""],
        "SEARCH_COUNT": ["c1", "c2", 10_000],
        "TRY_LOCK": [sql.SEQUENCE_LOCK],
        "PRUNED_THROUGH": [],
        "STATUS_COUNTS": [],
        "OLDEST_PENDING": [],
        "FAILED_REASONS": [20],
        "SEQUENCE_EVENTS": [10_000],
        "READ_EVENTS": [ROWS // 2, 1000],
        "EVENT_HORIZON": [],
        "PRUNE_EVENTS": [T0 - timedelta(days=1), ROWS // 2, 10_000],
        "ORDER_MINUTES": [LATER - timedelta(days=1)],
        "PRUNE_MINUTES": [LATER - timedelta(hours=25)],
        "HEARTBEAT": ["worker-new", T0, LATER, 3, 2, LATER + timedelta(seconds=6)],
        "STOP_INSTANCE": ["worker-new"],
        "INSTANCES": [],
        "PRUNE_INSTANCES": [LATER - timedelta(hours=1)],
    }  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def big_store() -> AsyncIterator[PostgresOrderStore]:
    """A store over ROWS orders and ROWS events, analyzed (made once: filling takes seconds)."""
    async with schema_store() as store:
        async with store.database.connection() as db:
            await db.execute(FILL_ORDERS, micros_since_epoch(T0), ROWS)
            await db.execute(FILL_EVENTS, T0, ROWS)
            await db.execute(
                "INSERT INTO idempotency_keys SELECT 'key-' || n, 'print', $1, now()"
                " FROM generate_series(0, 9999) AS n",
                order_id(0),
            )
            await db.execute("ANALYZE")
        yield store


async def test_every_statement_has_representative_arguments() -> None:
    """A statement added to postgres_sql must be added here, or it goes unexamined."""
    assert set(SQL_STATEMENTS) == set(statement_args(PostgresOrderStore(None, "")))


@pytest.mark.parametrize("name", sorted(SQL_STATEMENTS))
async def test_no_statement_scans_the_orders_or_the_events(
    big_store: PostgresOrderStore, name: str
) -> None:
    args = statement_args(big_store)[name]
    async with big_store.database.connection() as db:
        [[plan]] = await db.fetch("EXPLAIN (FORMAT JSON) " + SQL_STATEMENTS[name], *args)
        scans = scans_of_orders_or_events(list(plan_nodes(json.loads(plan)[0]["Plan"])))
        if scans:
            text = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + SQL_STATEMENTS[name], *args))
            pytest.fail(f"{name} scans {[s['Relation Name'] for s in scans]}:\n{text}")


@pytest.mark.parametrize("name", sorted(SQL_STATEMENTS))
async def test_no_statement_scans_the_orders_or_the_events_in_a_generic_plan(
    big_store: PostgresOrderStore, name: str
) -> None:
    """The same, for the plan the server keeps for any arguments once a statement has run five
    times (see `generic_plan`)."""
    async with big_store.database.connection() as db:
        plan = await generic_plan(
            db, SQL_STATEMENTS[name], statement_args(big_store)[name], analyze=False
        )
    scans = scans_of_orders_or_events(list(plan_nodes(plan)))
    assert not scans, f"{name} scans {[s['Relation Name'] for s in scans]}"


async def test_the_table_is_big_enough_that_a_scan_would_show(
    big_store: PostgresOrderStore,
) -> None:
    async with big_store.database.connection() as db:
        [[plan]] = await db.fetch(
            "EXPLAIN (FORMAT JSON) SELECT * FROM orders WHERE customer = $1", "C7"
        )
        [[events]] = await db.fetch(
            "EXPLAIN (FORMAT JSON) SELECT * FROM events WHERE type = $1", "order.shipped"
        )
    assert "Seq Scan" in plan
    assert "Seq Scan" in events


@pytest.mark.parametrize(
    ("start", "end"),
    [(ROWS // 2, ROWS // 2 + 4000), (None, None), (0, ROWS // 2)],
    ids=["narrow", "all", "half"],
)
@pytest.mark.parametrize("status", [None, OrderStatus.PENDING])
async def test_every_listing_is_an_index_range_without_a_sort(
    big_store: PostgresOrderStore, start: int | None, end: int | None, status: OrderStatus | None
) -> None:
    query = OrderQuery(
        start=None if start is None else T0 + timedelta(milliseconds=start),
        end=None if end is None else T0 + timedelta(milliseconds=end),
        status=status,
    )
    statement, args = big_store.list_statement(query)
    async with big_store.database.connection() as db:
        text = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + statement, *args))
    assert "Index" in text, text
    assert "Seq Scan" not in text, text
    assert "Sort" not in text, text
    page = await big_store.list_orders(query)
    assert len(page.orders) == 100
    assert all(o.status is (status or o.status) for o in page.orders)


SEARCHES = {
    "a rare name": OrderQuery(customer="c1234"),
    "a rare name, pending": OrderQuery(customer="c1234", status=OrderStatus.PENDING),
    "a tail": OrderQuery(id_tail=order_id(ROWS // 3)[-8:]),
    "a whole id, newest first": OrderQuery(id_tail=order_id(ROWS // 3), newest=True),
    "a tail and a name": OrderQuery(id_tail=order_id(7)[-10:], customer="c7"),
}


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("name", sorted(SEARCHES))
async def test_a_search_reads_its_own_index(
    big_store: PostgresOrderStore, name: str, generic: bool
) -> None:
    """A rare name or an id's tail is found through orders_customer or orders_id_reversed,
    never by a walk of every order, in the plan made for its arguments and in the one the
    server keeps for any (a tail, or a name the store counted as rare, is looked up first
    whatever the statistics say)."""
    query = SEARCHES[name]
    statement, args = big_store.list_statement(query)
    async with big_store.database.connection() as db:
        if generic:
            plan = await generic_plan(db, statement, args)
        else:
            [[text]] = await db.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, *args)
            plan = json.loads(text)[0]["Plan"]
    nodes = list(plan_nodes(plan))
    assert not scans_of_orders_or_events(nodes)
    index = "orders_id_reversed" if query.id_tail is not None else "orders_customer"
    assert index in {node.get("Index Name") for node in nodes}, plan
    page = await big_store.list_orders(query)
    assert page.orders
    assert all(o.customer.casefold().startswith(query.customer or "") for o in page.orders)


async def test_newest_first_walks_the_index_backwards_without_a_sort(
    big_store: PostgresOrderStore,
) -> None:
    for status in (None, OrderStatus.PENDING):
        query = OrderQuery(newest=True, status=status, end=T0 + timedelta(seconds=ROWS // 2000))
        statement, args = big_store.list_statement(query)
        async with big_store.database.connection() as db:
            text = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + statement, *args))
        assert "Index Scan Backward" in text, text
        assert "Sort" not in text, text
        assert "Seq Scan" not in text, text
        page = await big_store.list_orders(query)
        ids = [o.id for o in page.orders]
        assert ids == sorted(ids, reverse=True)
        assert len(ids) == 100


async def test_hot_statements_read_only_their_rows_when_statistics_lag() -> None:
    """Regression: statistics taken while every order was pending made each claim batch walk
    every order claimed before it, and each outcome batch every processing order: a trigger of
    100k orders shipped at a third of the speed of 20k. Each statement here runs for real
    (EXPLAIN ANALYZE, rolled back) and must throw away no row it read."""
    rows, claimed = 20_000, 18_000
    async with schema_store() as store, store.database.connection() as db:
        await db.execute(
            "INSERT INTO orders (id, customer, items, created_at, status, updated_at, history)"
            " SELECT 'order_' || lpad(to_hex($1::bigint + n), 14, '0')"
            "  || lpad(to_hex(n), 16, '0'), 'c' || n, '[]', now(), 'pending', now(), '[]'"
            " FROM generate_series(0, $2 - 1) AS n",
            micros_since_epoch(T0),
            rows,
        )
        await db.execute("ANALYZE")
        # A burst the statistics have not seen: claims (and their events), a worker holding
        # some orders, another whose leases ran out.
        assert await store.claim_pending(T0, claimed) == claimed
        held = await store.acquire(OWNER, 100, lease_s=60)
        await store.acquire("gone", 50, lease_s=0)
        ids, tokens = [h.order.id for h in held], [h.token for h in held]
        shipped = '[{"status": "shipped", "at": "2026-03-01T00:00:05Z"}]'
        outcomes = [["shipped"], [T0], [shipped], [False], ["order.shipped"], [None], [None]]
        outcomes = [column * 100 for column in outcomes]

        async def overreads(name: str, *args: object) -> dict[str, int]:
            """What the statement read beyond its rows: index entries past a batch of 1000,
            table rows its filters threw away; its writes rolled back."""
            transaction = db.transaction()
            await transaction.start()
            try:
                [[plan]] = await db.fetch(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + SQL_STATEMENTS[name], *args
                )
            finally:
                await transaction.rollback()
            nodes = [
                node
                for node in plan_nodes(json.loads(plan)[0]["Plan"])
                if node.get("Relation Name") in ("orders", "events") or "Index" in node["Node Type"]
            ]
            index_rows = max(
                (n["Actual Rows"] for n in nodes if "Index" in n["Node Type"]), default=0
            )
            found = {
                "index entries beyond 1000": max(0, index_rows - 1000),
                "rows removed by filter": sum(n.get("Rows Removed by Filter", 0) for n in nodes),
            }
            return {what: count for what, count in found.items() if count}

        checks: dict[str, Callable[[], list[object]]] = {
            "CLAIM": lambda: [T0, 1000, sql.ABOVE_ALL_IDS, ENTRY, ""],
            "ACQUIRE": lambda: ["another", 100, 60.0],
            "WRITE_OUTCOMES": lambda: [ids, tokens, *outcomes, OWNER],
            "RENEW": lambda: [OWNER, ids, tokens, 60.0, LATER, AT_TEXT],
            "RESCUE": lambda: [LATER, AT_TEXT],
            "RETIRE": lambda: [LATER, AT_TEXT, OWNER],
            "SEQUENCE_EVENTS": lambda: [1000],
        }
        # A hash join may still read a table this small whole (its statistics say so, and it is
        # cheaper here); the big table of the other tests shows those plans.
        found = {name: await overreads(name, *args()) for name, args in checks.items()}
        # Three read a bounded set beyond their rows, by design: a rescue looks at every held
        # order (at most two per worker of each instance) for the expired ones, a renewal looks
        # at what its holder holds again for what it did not renew (those it renewed are
        # filtered out through a hash of them, in any plan: see test_a_batch_of_outcomes_…),
        # and numbering looks at the unnumbered events only (the backlog, never the numbered
        # ones).
        assert found.pop("RESCUE").get("rows removed by filter", 0) <= len(held)
        assert found.pop("RENEW").get("rows removed by filter", 0) <= len(held)
        backlog = await db.fetchval(
            "SELECT coalesce(sum(size), 0) FROM event_batches WHERE seq IS NULL"
        )
        numbering = found.pop("SEQUENCE_EVENTS").get("index entries beyond 1000", 0)
        assert numbering <= backlog + 1000
        overread = {name: extra for name, extra in found.items() if extra}
        assert not overread, f"statements that read beyond their rows: {overread}"


async def generic_plan(
    db: Any, statement: str, args: list[Any], *, analyze: bool = True
) -> dict[str, Any]:
    """The plan the server keeps for a prepared statement once it plans it for any arguments
    (the driver prepares every statement; after five runs the server may plan it once for all),
    run for real (EXPLAIN ANALYZE) and rolled back, unless not to `analyze`."""
    parameters = (await db.prepare(statement)).get_parameters()
    types = [await db.fetchval("SELECT format_type($1::oid, NULL)", p.oid) for p in parameters]
    literals = [
        await db.fetchval(f"SELECT quote_nullable($1::{kind}::text) || '::{kind}'", value)
        for kind, value in zip(types, args, strict=True)
    ]
    declared, given = (f"({', '.join(types)})", f"({', '.join(literals)})") if types else ("", "")
    await db.execute(f"PREPARE generic {declared} AS {statement}")
    transaction = db.transaction()
    await transaction.start()
    try:
        await db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        [[plan]] = await db.fetch(
            f"EXPLAIN (ANALYZE {analyze}, FORMAT JSON) EXECUTE generic {given}"
        )
    finally:
        await transaction.rollback()
        await db.execute("DEALLOCATE generic")
    result: dict[str, Any] = json.loads(plan)[0]["Plan"]
    return result


async def test_a_batch_of_outcomes_reads_each_order_once_in_any_plan() -> None:
    """Regression: in the plan the server keeps for a prepared statement, a batch of outcomes
    (and a renewal) walked the holder's orders and compared each with the whole batch: 500
    outcomes made 250,000 comparisons, 150 µs of the database's CPU an order, so that the outcome
    writer's larger batches cost more an order, not less. Each order is found by its id now."""
    held_count = 200
    async with schema_store() as store, store.database.connection() as db:
        await db.execute(
            "INSERT INTO orders (id, customer, items, created_at, status, updated_at, history)"
            " SELECT 'order_' || lpad(to_hex($1::bigint + n), 14, '0')"
            "  || lpad(to_hex(n), 16, '0'), 'c' || n, '[]', now(), 'pending', now(), '[]'"
            " FROM generate_series(0, $2 - 1) AS n",
            micros_since_epoch(T0),
            2000,
        )
        await db.execute("ANALYZE")
        assert await store.claim_pending(T0, held_count) == held_count
        held = await store.acquire(OWNER, held_count, lease_s=60)
        ids, tokens = [h.order.id for h in held], [h.token for h in held]
        shipped = '[{"status": "shipped", "at": "2026-03-01T00:00:05Z"}]'
        outcomes = [["shipped"], [T0], [shipped], [False], ["order.shipped"], [None], [None]]
        arguments = {
            "WRITE_OUTCOMES": [ids, tokens, *(column * held_count for column in outcomes), OWNER],
            "RENEW": [OWNER, ids, tokens, 60.0, LATER, AT_TEXT],
        }
        for name, args in arguments.items():
            nodes = list(plan_nodes(await generic_plan(db, SQL_STATEMENTS[name], args)))
            compared = sum(n.get("Rows Removed by Join Filter", 0) for n in nodes)
            assert compared == 0, f"{name} compared {compared} pairs it threw away"
            updated = max(n["Actual Rows"] for n in nodes if n["Node Type"] == "ModifyTable")
            assert updated == held_count, name


async def test_a_claim_walks_pending_orders_from_where_the_last_batch_stopped(
    big_store: PostgresOrderStore,
) -> None:
    """The claims of one trigger start their index scan after the last id claimed (see
    test_claims): the scan's bounds, not a filter, keep it off the orders claimed before."""
    async with big_store.database.connection() as db:
        [[plan]] = await db.fetch(
            "EXPLAIN (FORMAT JSON) " + sql.CLAIM, *statement_args(big_store)["CLAIM"]
        )
    [scan] = [
        node
        for node in plan_nodes(json.loads(plan)[0]["Plan"])
        if node.get("Index Name") == "orders_pending"
    ]
    assert "(id > " in scan["Index Cond"], scan


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("newest", [False, True], ids=["oldest", "newest"])
@pytest.mark.parametrize("status", [None, OrderStatus.SHIPPED])
@pytest.mark.parametrize("prefix", ["c", "c1"])
async def test_a_dense_search_walks_the_id_order_and_sorts_nothing(
    big_store: PostgresOrderStore,
    prefix: str,
    status: OrderStatus | None,
    newest: bool,
    generic: bool,
) -> None:
    """A prefix most orders match ("c": all of them, "c1": one in nine) must not be read
    through orders_customer and every match sorted on each page (a generic plan did, with a
    status: 180 ms a page): the store counts the prefix first, and a dense one walks the id
    order (or (status, id)), at most the bound of orders, and filters by the key, stopping at
    the page's end, in the plan made for its arguments and in the one kept for any; so does
    the look-up of where that walk ends."""
    query = OrderQuery(customer=prefix, status=status, newest=newest)
    async with big_store.database.connection() as db:
        counted = await db.fetchval(sql.SEARCH_COUNT, prefix, prefix_end(prefix), 10_000)
    assert counted == big_store.search_bound == 10_000  # so the store takes the dense way
    statement, args = big_store.list_statement(query, walk=10_000)
    async with big_store.database.connection() as db:
        if generic:
            plan = await generic_plan(db, statement, args)
        else:
            [[text]] = await db.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, *args)
            plan = json.loads(text)[0]["Plan"]
    nodes = list(plan_nodes(plan))
    assert not scans_of_orders_or_events(nodes), plan
    assert not [node for node in nodes if "Sort" in node["Node Type"]], plan
    assert "orders_customer" not in {node.get("Index Name") for node in nodes}, plan
    read = sum(node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0) for node in nodes)
    assert read < 10_000, plan
    ended, ended_args = big_store.walk_end_statement(query, 10_000)
    async with big_store.database.connection() as db:
        nodes = list(plan_nodes(await generic_plan(db, ended, ended_args)))
    assert not scans_of_orders_or_events(nodes)
    assert not [node for node in nodes if "Sort" in node["Node Type"]], nodes


async def test_a_search_pages_alike_through_the_key_or_the_id_order() -> None:
    """See `assert_searches_page_alike`: the same orders whichever way a prefix is read."""
    async with schema_store(search_bound=5) as dense, schema_store() as by_key:
        await assert_searches_page_alike(dense, by_key)
