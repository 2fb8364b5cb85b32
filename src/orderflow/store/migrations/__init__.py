"""The versioned schema: one SQL file per migration (0001_orders.sql, …), applied in name order
and recorded in schema_migrations. A change to the schema is a new file, never an edit. A file
may have a step in Python (`_STEPS`), run right after it in its transaction, for what SQL
cannot compute the way the service does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from orderflow.domain import search_key

_MIGRATION_LOCK = 0x6F72646572  # any constant shared by every orderflow process


async def migrate(connection: Any) -> list[str]:
    """Apply every migration not applied yet, in order, under an advisory lock so that
    processes starting together do not race; returns the names applied."""
    folder = resources.files("orderflow.store.migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    applied: list[str] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")
        }
        for file in files:
            version = file.name.removesuffix(".sql")
            if version in done:
                continue
            await connection.execute(file.read_text())
            step = _STEPS.get(version)
            if step is not None:
                await step(connection)
            await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
    return applied


_BACKFILL_BATCH = 10_000


async def _fill_search_keys(connection: Any) -> None:
    """The customer_key of every order there is (0006_search), by batches of ids."""
    after = ""
    while True:
        rows = await connection.fetch(
            "SELECT id, customer FROM orders WHERE id > $1 ORDER BY id LIMIT $2",
            after,
            _BACKFILL_BATCH,
        )
        if not rows:
            return
        await connection.execute(
            "UPDATE orders o SET customer_key = k.key"
            " FROM unnest($1::text[], $2::text[]) AS k(id, key) WHERE o.id = k.id",
            [row["id"] for row in rows],
            [search_key(row["customer"]) for row in rows],
        )
        after = rows[-1]["id"]


_STEPS: dict[str, Callable[[Any], Awaitable[None]]] = {"0006_search": _fill_search_keys}
