"""The versioned schema: one SQL file per migration (0001_orders.sql, …), applied in name order
and recorded in schema_migrations. A change to the schema is a new file, never an edit."""

from __future__ import annotations

from importlib import resources
from typing import Any

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
            await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
    return applied
