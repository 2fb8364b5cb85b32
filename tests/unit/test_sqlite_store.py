"""What the SQLite store promises beyond the contract: the durability settings read back from
the live connection, group commit, a failed commit (a full disk) answered 503 with nothing
half applied and /readyz failing until a commit succeeds again, and what the last run held
taken back at start."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from orderflow.domain import (
    EventType,
    Item,
    OrderQuery,
    OrderStatus,
    micros_since_epoch,
    new_order,
    new_order_id,
    search_key,
)
from orderflow.errors import StoreUnavailable
from orderflow.store import sqlite_file
from orderflow.store.base import MinuteCounts
from orderflow.store.memory_rows import row_of
from orderflow.store.sqlite import SqliteOrderStore
from orderflow.store.sqlite_file import APPLICATION_ID, migrations
from tests.conftest import BASE_TIME, ManualClock, make_order
from tests.helpers import assert_searches_page_alike
from tests.sqlite import sqlite_url

pytestmark = pytest.mark.filterwarnings("error")


async def test_full_sync_is_the_default_and_normal_is_asked_for_in_the_url(
    tmp_path: Path,
) -> None:
    store = await SqliteOrderStore.open(sqlite_url(tmp_path, "full.db"))
    try:
        assert store.synchronous() == "full"
        assert store.journal_mode() == "wal"
    finally:
        await store.close()
    store = await SqliteOrderStore.open(sqlite_url(tmp_path, "normal.db") + "?synchronous=normal")
    try:
        assert store.synchronous() == "normal"
    finally:
        await store.close()


async def test_concurrent_writes_share_one_commit(tmp_path: Path) -> None:
    store = await SqliteOrderStore.open(sqlite_url(tmp_path))
    try:
        clock = ManualClock()
        before = store.database.commits
        await asyncio.gather(*(store.add(make_order(clock, customer=f"c{n}")) for n in range(200)))
        commits = store.database.commits - before
        assert commits <= 5, commits
        assert (await store.count_by_status())[OrderStatus.PENDING] == 200
    finally:
        await store.close()


async def test_a_full_disk_fails_the_group_with_nothing_half_applied_until_it_has_room(
    tmp_path: Path,
) -> None:
    store = await SqliteOrderStore.open(sqlite_url(tmp_path))
    try:
        clock = ManualClock()
        await store.add(make_order(clock))
        pages = store.database.on_writer("PRAGMA page_count")
        store.database.on_writer(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
        orders = [
            new_order(new_order_id(BASE_TIME, n), "x" * 200, (Item("y" * 200, 1),) * 100, BASE_TIME)
            for n in range(1, 40)
        ]
        results = await asyncio.gather(*(store.add(o) for o in orders), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert "full" in str(results[0])
        assert await store.count_by_status() == {
            **dict.fromkeys(OrderStatus, 0),
            OrderStatus.PENDING: 1,
        }
        assert [await store.find_order(o.id) for o in orders] == [None] * len(orders)
        assert store.outage.since is not None
        store.database.on_writer("PRAGMA max_page_count = 1073741823")
        await store.ping()  # a commit succeeds: the outage is over
        assert store.outage.since is None
        await store.add(orders[0])
        assert await store.find_order(orders[0].id) == orders[0]
    finally:
        await store.close()


async def test_readyz_fails_after_a_failed_commit_until_one_succeeds(
    tmp_path: Path, start_runtime: object
) -> None:
    from orderflow.server import build_app
    from tests.api.conftest import serve_over_asgi

    store = await SqliteOrderStore.open(sqlite_url(tmp_path))
    runtime = await start_runtime(store=store)  # type: ignore[operator]
    async with serve_over_asgi(build_app(runtime)) as served:
        client: httpx.AsyncClient = served.client
        order = {"customer": "Ada", "items": [{"name": "W", "quantity": 1}]}
        assert (await client.post("/orders", json=order)).status_code == 201
        store.database.on_writer("PRAGMA query_only = ON")  # every write fails, as on a bad disk
        answers = await asyncio.gather(*(client.post("/orders", json=order) for _ in range(20)))
        assert {a.status_code for a in answers} == {503}
        assert answers[0].headers["content-type"] == "application/problem+json"
        assert (await client.get("/readyz")).status_code == 503  # its probe commit fails too
        assert (await client.get("/readyz")).status_code == 503
        store.database.on_writer("PRAGMA query_only = OFF")
        assert (await client.get("/readyz")).status_code == 200  # a commit succeeded
        assert (await client.post("/orders", json=order)).status_code == 201
        assert (await store.count_by_status())[OrderStatus.PENDING] == 2


async def test_what_the_last_run_held_is_rescued_at_start_with_a_history_entry(
    tmp_path: Path,
) -> None:
    """A run that ends without a clean stop (no release, no retire: a crash) leaves orders
    processing, some held: the next open makes every one ready again, with a history entry and
    an order.rescued event, so that they ship without another trigger."""
    store = await SqliteOrderStore.open(sqlite_url(tmp_path))
    clock = ManualClock()
    orders = [make_order(clock, customer=f"c{n}") for n in range(5)]
    for order in orders:
        await store.add(order)
    assert await store.claim_pending(clock.now(), 4) == 4
    held = await store.acquire("gone", 2, 15.0)
    await store.close()  # as a crash leaves it: held and ready orders, nothing handed back
    again = await SqliteOrderStore.open(sqlite_url(tmp_path))
    try:
        counts = await again.count_by_status()
        assert counts[OrderStatus.PROCESSING] == 4
        acquired = await again.acquire("new", 10, 15.0)
        assert sorted(h.order.id for h in acquired) == sorted(o.id for o in orders[:4])
        assert min(h.token for h in acquired) > max(h.token for h in held)  # tokens go on
        for h in acquired:
            assert h.order.history[-1].reason == (
                "rescued at start: the last run ended while it was processing"
            )
        events = await again.read_events(0, 100)
        assert sum(e.type is EventType.RESCUED for e in events) == 4
        assert list(again.check_invariants()) == []
    finally:
        await again.close()


async def test_the_search_migration_gives_the_orders_there_are_their_keys(tmp_path: Path) -> None:
    """A file of schema 2 (no search keys) holding orders: 0003_search computes each one's
    keys in Python, as an insert does, so that they are found like new ones."""
    names = ["Straße", "ÆRØSKØBING", "Σίσυφος", "plain"]
    orders = [
        new_order(new_order_id(BASE_TIME, n), name, (Item("w", 1),), BASE_TIME)
        for n, name in enumerate(names)
    ]
    path = tmp_path / "orders.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(
            "CREATE TABLE schema_migrations ("
            " version TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT (datetime('now')))"
        )
        for number, name, script in migrations()[:2]:
            db.executescript(script)
            db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (name,))
            db.execute(f"PRAGMA user_version = {number}")
        for order in orders:
            row = row_of(order)
            db.execute(
                "INSERT INTO orders (id, status, head) VALUES (?, 'pending', ?)",
                (order.id, row.head),
            )
        db.execute("UPDATE status_counts SET count = ? WHERE status = 'pending'", (len(names),))
    finally:
        db.close()
    store = await SqliteOrderStore.open(sqlite_url(tmp_path))
    try:
        for text, expected in [("STRASSE", [0]), ("ærø", [1]), ("ΣΊΣ", [2]), ("p", [3])]:
            page = await store.list_orders(OrderQuery(customer=search_key(text)))
            assert [o.id for o in page.orders] == [orders[n].id for n in expected], text
        page = await store.list_orders(OrderQuery(id_tail=orders[2].id[-8:]))
        assert [o.id for o in page.orders] == [orders[2].id]
    finally:
        await store.close()


async def test_the_minutes_migration_counts_the_events_a_file_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of the days before the minute counts gets them from its events of the last 25
    hours."""
    every = sqlite_file.migrations()
    [before] = [n for n, (_, name, _) in enumerate(every) if name.endswith("_minutes_instances")]
    path = tmp_path / "orders.db"
    db = sqlite3.connect(path, isolation_level=None)
    monkeypatch.setattr(sqlite_file, "migrations", lambda: every[:before])
    sqlite_file.migrate(db, 0)
    monkeypatch.undo()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    old = now - timedelta(minutes=10)
    db.executemany(
        "INSERT INTO events (type, order_id, status, at) VALUES (?, ?, ?, ?)",
        [
            ("order.submitted", "order_a", "pending", micros_since_epoch(old)),
            ("order.submitted", "order_b", "pending", micros_since_epoch(old) + 5),
            ("order.shipped", "order_a", "shipped", micros_since_epoch(now)),
            ("order.submitted", "order_c", "pending", micros_since_epoch(old - timedelta(days=2))),
        ],
    )
    db.close()
    store = await SqliteOrderStore.open(sqlite_url(tmp_path))
    try:
        assert await store.order_minutes(now - timedelta(days=3)) == [
            MinuteCounts(old, 2, 0, 0),
            MinuteCounts(now, 0, 1, 0),
        ]
    finally:
        await store.close()


async def test_a_search_pages_alike_through_the_key_or_the_time_order(tmp_path: Path) -> None:
    """See `assert_searches_page_alike`: the same orders whichever way a prefix is read."""
    stores = [
        await SqliteOrderStore.open(sqlite_url(tmp_path, f"{bound}.db"), search_bound=bound)
        for bound in (5, 10_000)
    ]
    try:
        await assert_searches_page_alike(*stores)
    finally:
        for store in stores:
            await store.close()
