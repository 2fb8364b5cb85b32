"""The indexes behind every statement of `sqlite_sql`: none walks the orders, the events or
the idempotency keys, however many there are. Plans are read on a file the store made (its
migrations), as SQLite makes them there: without statistics, for the store runs no ANALYZE."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from orderflow.store import sqlite_sql as sql
from orderflow.store.sqlite import SqliteOrderStore
from tests.sqlite import sqlite_url

_VERBS = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE")
STATEMENTS = {
    name: value
    for name, value in vars(sql).items()
    if name.isupper() and isinstance(value, str) and value.lstrip().upper().startswith(_VERBS)
}
STATEMENTS |= {
    f"{name}[{key}]": value
    for name, table in vars(sql).items()
    if name.isupper() and isinstance(table, dict)
    for key, value in table.items()
}
STATEMENTS |= {"find_for_changes(3)": sql.find_for_changes(3)}
STATEMENTS |= {f"search_count({n})": sql.search_count(n) for n in (1, 2)}
STATEMENTS |= {
    f"walk_end{args}": sql.walk_end(*args)
    for args in itertools.product((False, True), (False, True), (False, True))
}
# Every listing: (status given, after the cursor, newest first, customer bounds, tail bounds,
# a dense prefix).
LISTINGS = list(
    itertools.product((False, True), (False, True), (False, True), (0, 1, 2), (0, 2), (False, True))
)
STATEMENTS |= {f"listing{args}": sql.listing(*args) for args in LISTINGS}
BIG_TABLES = ("orders", "events", "idempotency_keys")
# Walks that stop early: the partial index of ready orders holds only them, taken oldest first
# up to a limit; the oldest events, in seq order, up to a limit.
WALKS = {
    "READY": "SCAN orders USING INDEX orders_ready",
    "READY_IDS": "SCAN orders USING INDEX orders_ready",
    "OLDEST_EVENTS": "SCAN events",
}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    folder = tmp_path_factory.mktemp("plans")

    async def made() -> None:
        await (await SqliteOrderStore.open(sqlite_url(folder))).close()

    asyncio.run(made())
    connection = sqlite3.connect(Path(folder) / "orders.db")
    yield connection
    connection.close()


def plan(db: sqlite3.Connection, statement: str) -> list[str]:
    rows = db.execute("EXPLAIN QUERY PLAN " + statement, ["x"] * statement.count("?"))
    return [row[3] for row in rows]


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_no_statement_walks_a_big_table(db: sqlite3.Connection, name: str) -> None:
    steps = plan(db, STATEMENTS[name])
    walks = [s for s in steps if s.startswith("SCAN ") and s.split()[1] in BIG_TABLES]
    assert walks == ([WALKS[name]] if name in WALKS else []), steps


def test_ready_orders_are_found_through_their_own_index(db: sqlite3.Connection) -> None:
    """Regression: left to itself, the planner took (status, id) for the ready orders and
    stepped over every held one on each acquire (an acquire cost grew with what was held:
    38 µs an order at 100k held, 7 µs through the index of ready orders)."""
    for name in ("READY", "READY_IDS"):
        assert plan(db, STATEMENTS[name]) == [WALKS[name]]


Listing = tuple[bool, bool, bool, int, int, bool]


@pytest.mark.parametrize("args", [a for a in LISTINGS if a[4] or (a[3] and not a[5])], ids=str)
def test_a_rare_search_reads_its_own_index(db: sqlite3.Connection, args: Listing) -> None:
    """Regression: without statistics the planner walked the primary key in id order and
    filtered each order by its customer, every order for a name that is rare. A search reads
    the index of its keys (an id's tail, the narrower, when both are given), then sorts what
    it found: fewer than the store's search bound for a customer prefix (counted first)."""
    index = "orders_id_reversed" if args[4] else "orders_customer"
    steps = plan(db, sql.listing(*args))
    assert steps[0].startswith(f"SEARCH orders USING INDEX {index} ("), steps
    assert steps[1:] == ["USE TEMP B-TREE FOR ORDER BY"], steps


@pytest.mark.parametrize("args", [a for a in LISTINGS if a[3] and a[5] and not a[4]], ids=str)
def test_a_dense_search_walks_the_time_order_and_sorts_nothing(
    db: sqlite3.Connection, args: Listing
) -> None:
    """Regression: a prefix most orders match ("c" of 300k) was read through its index and
    every match sorted on each page (159 ms a page, the event loop blocked). Past the search
    bound a search walks the primary key (or (status, id)) from the cursor, at most the bound
    of orders, filtering by the key, and stops at the page's end: nothing sorts the walk."""
    way = (
        "INDEX orders_status (status=? AND id>? AND id<?)"
        if args[0]
        else "PRIMARY KEY (id>? AND id<?)"
    )
    assert plan(db, sql.listing(*args)) == [
        "CO-ROUTINE (subquery-1)", f"SEARCH orders USING {way}", "SCAN (subquery-1)"
    ]  # fmt: skip


def test_a_prefix_is_counted_on_its_index_alone(db: sqlite3.Connection) -> None:
    """The count that picks the way reads index entries only, at most the bound of them."""
    for n, where in ((1, "customer_key>?"), (2, "customer_key>? AND customer_key<?")):
        steps = plan(db, sql.search_count(n))
        assert f"SEARCH orders USING COVERING INDEX orders_customer ({where})" in steps, steps
        assert "USE TEMP B-TREE FOR ORDER BY" not in steps, steps


@pytest.mark.parametrize("args", [a for a in LISTINGS if not (a[3] or a[4] or a[5])], ids=str)
def test_a_listing_newest_first_or_oldest_first_needs_no_sort(
    db: sqlite3.Connection, args: Listing
) -> None:
    """Both sorts walk the primary key (or (status, id)), one way or the other."""
    steps = plan(db, sql.listing(*args))
    assert len(steps) == 1, steps
    assert steps[0].startswith("SEARCH orders USING "), steps
