"""The versioned schema: `orderflow db migrate` applies each migration once, in order, even
when several processes start together."""

from __future__ import annotations

import asyncio
from importlib import resources

import asyncpg
from click.testing import CliRunner

from orderflow.cli import main
from orderflow.store.migrations import migrate

VERSIONS = sorted(
    f.name.removesuffix(".sql")
    for f in resources.files("orderflow.store.migrations").iterdir()
    if f.name.endswith(".sql")
)


async def applied(url: str) -> list[str]:
    db = await asyncpg.connect(url)
    try:
        rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY applied_at, version")
        return [row["version"] for row in rows]
    finally:
        await db.close()


def test_db_migrate_applies_every_migration_once_in_order(database_url: str) -> None:
    assert VERSIONS[:2] == ["0001_orders", "0002_pending_index"]
    runner = CliRunner()
    outputs = []
    for _ in range(2):  # the second run finds nothing to do
        result = runner.invoke(main, ["db", "migrate", "--database-url", database_url])
        assert result.exit_code == 0, result.output
        outputs.append(result.output.splitlines())
    done = "database schema is up to date"
    assert outputs == [[*(f"applied {version}" for version in VERSIONS), done], [done]]
    assert asyncio.run(applied(database_url)) == VERSIONS


async def test_processes_migrating_at_once_apply_each_migration_once(database_url: str) -> None:
    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(db) for db in connections))
    finally:
        for db in connections:
            await db.close()
    assert sorted(v for versions in results for v in versions) == VERSIONS
    assert await applied(database_url) == VERSIONS


def test_db_migrate_without_a_database_fails_clearly() -> None:
    result = CliRunner().invoke(
        main, ["db", "migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"]
    )
    assert result.exit_code == 1
    assert "the database is unavailable" in result.output
