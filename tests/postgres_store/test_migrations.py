"""The versioned schema: `orderflow db migrate` applies each migration once, in order, even
when several processes start together; 0003 takes over a database that 0002 left holding
orders, its counts taken from the orders already there; and 0005 keeps the events 0004 left,
each with its seq, those not numbered yet numbered after them; 0006 gives the orders there
are their search keys; 0007 counts the minutes of the events numbered already, and numbering
folds in the rest; a server older than the statements need is refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from importlib import resources

import asyncpg
import pytest
from click.testing import CliRunner

from orderflow.cli import cli
from orderflow.domain import OrderQuery, OrderStatus, search_key
from orderflow.errors import StoreUnavailable
from orderflow.store import postgres
from orderflow.store.postgres import PostgresOrderStore
from tests.helpers import ROOT
from tests.postgres_store.conftest import add_orders

pytestmark = pytest.mark.postgres

MIGRATIONS = resources.files("orderflow.store.migrations")
VERSIONS = sorted(
    f.name.removesuffix(".sql") for f in MIGRATIONS.iterdir() if f.name.endswith(".sql")
)


async def applied(url: str) -> list[str]:
    db = await asyncpg.connect(url)
    try:
        rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY applied_at, version")
        return [row["version"] for row in rows]
    finally:
        await db.close()


def test_db_migrate_applies_every_migration_once_in_order(database_url: str) -> None:
    assert VERSIONS[:3] == ["0001_orders", "0002_pending_index", "0003_events_holds_counts"]
    runner = CliRunner()
    outputs = []
    for _ in range(2):  # the second run finds nothing to do
        result = runner.invoke(cli, ["db", "migrate", "--database-url", database_url])
        assert result.exit_code == 0, result.output
        outputs.append(result.output.splitlines())
    done = "database schema is up to date"
    assert outputs == [[*(f"applied {version}" for version in VERSIONS), done], [done]]


def test_three_processes_migrating_at_once_apply_each_migration_once(database_url: str) -> None:
    command = [sys.executable, "-m", "orderflow", "db", "migrate", "--database-url", database_url]
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    lines = [line for stdout, _ in outputs for line in stdout.splitlines()]
    assert lines.count("database schema is up to date") == 3
    said = [line.removeprefix("applied ") for line in lines if line.startswith("applied ")]
    assert sorted(said) == VERSIONS  # each once, by one process or another
    for stdout, _ in outputs:  # and each process applied its share in order
        mine = [line.removeprefix("applied ") for line in stdout.splitlines() if "applied" in line]
        assert mine == sorted(mine)
    assert asyncio.run(applied(database_url)) == VERSIONS


def test_db_migrate_without_a_database_fails_in_one_line() -> None:
    result = CliRunner().invoke(
        cli, ["db", "migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"]
    )
    assert result.exit_code == 2
    assert result.output.startswith("orderflow: --database-url: cannot connect to the database")
    assert len(result.output.splitlines()) == 1


async def migrate_to_0002(url: str, through: str = "0002_pending_index") -> None:
    """The schema as a service of the 0002 days (or of the days of `through`) left it."""
    db = await asyncpg.connect(url)
    try:
        await db.execute(
            "CREATE TABLE schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version in VERSIONS[: VERSIONS.index(through) + 1]:
            await db.execute(MIGRATIONS.joinpath(f"{version}.sql").read_text())
            await db.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
    finally:
        await db.close()


async def test_0003_takes_over_a_database_of_0002_and_counts_its_orders(
    database_url: str,
) -> None:
    await migrate_to_0002(database_url)
    db = await asyncpg.connect(database_url)
    try:
        # Orders as 0002's service wrote them: no shipment column, no events, no counts.
        await db.execute(
            "INSERT INTO orders (id, customer, items, created_at, status, updated_at, history,"
            " owner, attempt, lease_expires_at)"
            " SELECT 'order_' || lpad(to_hex(1700000000000000 + n), 14, '0')"
            "  || lpad(to_hex(n), 16, '0'), 'c' || n, '[{\"name\": \"w\", \"quantity\": 1}]',"
            "  now(), s, now(),"
            "  jsonb_build_array("
            "   jsonb_build_object('status', 'pending', 'at', '2023-11-14T22:13:20Z'),"
            "   jsonb_build_object('status', s, 'at', '2023-11-14T22:13:21Z', 'reason',"
            "    CASE WHEN s = 'failed' THEN (ARRAY['timeout', 'carrier down'])[n % 2 + 1] END)),"
            "  CASE WHEN s = 'processing' AND n % 2 = 0 THEN 'old-worker' END, 1,"
            "  CASE WHEN s = 'processing' AND n % 2 = 0 THEN now() + interval '1 hour' END"
            " FROM generate_series(0, 99) AS n,"
            " LATERAL (SELECT (ARRAY['pending', 'processing', 'shipped', 'failed', 'cancelled'])"
            "  [n % 5 + 1] AS s) AS t"
        )
        before = dict(await db.fetch("SELECT status, count(*) FROM orders GROUP BY status"))
    finally:
        await db.close()

    store = await PostgresOrderStore.connect(database_url)  # migrates: 0003 only
    try:
        assert await applied(database_url) == VERSIONS
        stats = await store.stats()
        assert stats.by_status == {s: before.get(s.value, 0) for s in OrderStatus}
        assert {r.reason: r.count for r in stats.failed_reasons} == {
            "timeout": 10,
            "carrier down": 10,
        }
        assert await store.read_events(0, 10) == []  # no history invented
        order = await store.get_order("order_" + f"{1700000000000000 + 2:014x}{2:016x}")
        assert order.shipment is None
        # And the counts go on from there.
        [new] = await add_orders(store, 1)
        assert (await store.count_by_status())[OrderStatus.PENDING] == before["pending"] + 1
        assert [e.order_id for e in await store.read_events(0, 10)] == [new]
    finally:
        await store.close()


async def test_0005_keeps_every_event_of_0004_with_its_seq_and_numbers_the_rest_after(
    database_url: str,
) -> None:
    await migrate_to_0002(database_url, through="0004_webhooks")
    db = await asyncpg.connect(database_url)
    try:
        # Events as 0004's service wrote them, one row each: three numbered, two not yet.
        await db.execute(
            "INSERT INTO events (type, order_id, status, at, seq)"
            " SELECT 'order.submitted', 'order_' || n, 'pending', now(),"
            "  CASE WHEN n < 3 THEN 10 + n END FROM generate_series(0, 4) AS n"
        )
        await db.execute("UPDATE event_horizon SET pruned_through = 9")
    finally:
        await db.close()
    store = await PostgresOrderStore.connect(database_url)  # migrates: 0005 on
    try:
        assert await applied(database_url) == VERSIONS
        assert [(e.seq, e.order_id) for e in await store.read_events(9, 10)] == [
            (10, "order_0"),
            (11, "order_1"),
            (12, "order_2"),
        ]
        [new] = await add_orders(store, 1)
        assert await store.sequence_events() == 3
        events = await store.read_events(12, 10)
        assert [(e.seq, e.order_id) for e in events] == [
            (13, "order_3"),
            (14, "order_4"),
            (15, new),
        ]
    finally:
        await store.close()


async def test_0006_gives_the_orders_there_are_their_search_keys_by_casefold(
    database_url: str,
) -> None:
    """lower() is not casefold ("ß" stays "ß"): 0006's step computes each key in Python, by
    batches, so the orders there are are found as new ones are."""
    await migrate_to_0002(database_url, through="0005_event_batches")
    names = ["Straße", "ÆRØSKØBING", "Σίσυφος", "plain"]
    db = await asyncpg.connect(database_url)
    try:
        await db.execute(
            "INSERT INTO orders (id, customer, items, created_at, status, updated_at, history)"
            " SELECT 'order_' || lpad(to_hex(1700000000000000 + n), 14, '0')"
            "  || lpad(to_hex(n), 16, '0'), ($1::text[])[n + 1], '[]', now(), 'pending', now(),"
            '  \'[{"status": "pending", "at": "2023-11-14T22:13:20Z"}]\''
            " FROM generate_series(0, 3) AS n",
            names,
        )
        ids = [r["id"] for r in await db.fetch("SELECT id FROM orders ORDER BY id")]
    finally:
        await db.close()
    store = await PostgresOrderStore.connect(database_url)  # migrates: 0006 on
    try:
        assert await applied(database_url) == VERSIONS
        for text, expected in [("STRASSE", [0]), ("ærø", [1]), ("ΣΊΣ", [2]), ("p", [3])]:
            page = await store.list_orders(OrderQuery(customer=search_key(text)))
            assert [o.id for o in page.orders] == [ids[n] for n in expected], text
        page = await store.list_orders(OrderQuery(id_tail=ids[2][-8:]))
        assert [o.id for o in page.orders] == [ids[2]]
    finally:
        await store.close()


async def test_0007_counts_the_minutes_of_the_events_kept(database_url: str) -> None:
    await migrate_to_0002(database_url, through="0005_event_batches")
    db = await asyncpg.connect(database_url)
    try:
        # Three events numbered (two submits, a ship the minute after), one not yet (a fail),
        # and one older than the counts are kept.
        base = await db.fetchval("SELECT date_trunc('minute', now(), 'UTC') - interval '10 min'")
        await db.execute(
            "INSERT INTO event_batches (id, seq, size) VALUES (1, 1, 1), (2, 2, 1), (3, 3, 1),"
            " (4, NULL, 1), (5, 4, 1)"
        )
        await db.execute(
            "INSERT INTO events (batch, pos, type, order_id, status, at) VALUES"
            " (1, 1, 'order.submitted', 'order_a', 'pending', $1::timestamptz + interval '1 s'),"
            " (2, 1, 'order.submitted', 'order_b', 'pending', $1 + interval '59 s'),"
            " (3, 1, 'order.shipped', 'order_a', 'shipped', $1 + interval '90 s'),"
            " (4, 1, 'order.failed', 'order_b', 'failed', $1 + interval '100 s'),"
            " (5, 1, 'order.submitted', 'order_c', 'pending', $1 - interval '2 days')",
            base,
        )
    finally:
        await db.close()
    store = await PostgresOrderStore.connect(database_url)  # migrates: 0007 on
    try:
        db = await asyncpg.connect(database_url)
        try:
            rows = await db.fetch("SELECT * FROM order_minutes ORDER BY minute")
        finally:
            await db.close()
        assert [tuple(row) for row in rows] == [
            (base, 2, 0, 0),
            (base + timedelta(minutes=1), 0, 1, 0),
        ]
        minutes = await store.order_minutes(base - timedelta(days=3))  # folds in the fail
        assert [(m.minute, m.submitted, m.shipped, m.failed) for m in minutes] == [
            (base, 2, 0, 0),
            (base + timedelta(minutes=1), 0, 1, 1),
        ]
    finally:
        await store.close()


async def test_a_server_older_than_the_statements_need_is_refused_at_connect_naming_both(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's version is read once at connect: one below OLDEST_SERVER is refused before
    anything is migrated (the test raises the bar above the server it has)."""
    monkeypatch.setattr(postgres, "OLDEST_SERVER", 99)
    with pytest.raises(StoreUnavailable, match=r"PostgreSQL 99 or newer is needed; this server"):
        await PostgresOrderStore.connect(database_url)
    assert await applied_or_none(database_url) is None


async def applied_or_none(url: str) -> list[str] | None:
    try:
        return await applied(url)
    except asyncpg.UndefinedTableError:
        return None
