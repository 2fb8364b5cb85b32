"""The indexes behind every statement of `sqlite_sql`: none walks the orders, the events or
the idempotency keys, however many there are. Plans are read on a file the store made (its
migrations), as SQLite makes them there: without statistics, for the store runs no ANALYZE."""

from __future__ import annotations

import asyncio
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
