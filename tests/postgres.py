"""Reaching the test PostgreSQL: ORDERFLOW_TEST_DATABASE_URL; under CI=true it must be there.
Stores in schemas of their own, databases of their own, and `query` to look at one directly."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from orderflow.store.postgres import PostgresOrderStore

DATABASE_URL = os.environ.get(
    "ORDERFLOW_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(DATABASE_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"PostgreSQL is required under CI: {exc}") from exc
        pytest.skip(f"no PostgreSQL at {DATABASE_URL}: {exc}")


@asynccontextmanager
async def schema_store(
    command_timeout_s: float = 10.0, **options: float
) -> AsyncIterator[PostgresOrderStore]:
    """A PostgresOrderStore in a schema of its own, dropped afterwards (`options`: more of
    `PostgresOrderStore.connect`'s)."""
    admin = await admin_connection()
    schema = f"orderflow_test_{secrets.token_hex(4)}"
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        store = await PostgresOrderStore.connect(
            DATABASE_URL,
            server_settings={"search_path": schema},
            max_size=4,
            command_timeout_s=command_timeout_s,
            **options,  # type: ignore[arg-type]
        )
        try:
            yield store
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def new_schema() -> dict[str, str]:
    """A new schema, migrated: the server settings that put a store in it (drop it with
    `drop_schema`)."""
    admin = await admin_connection()
    schema = f"orderflow_test_{secrets.token_hex(4)}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
    finally:
        await admin.close()
    settings = {"search_path": schema}
    store = await PostgresOrderStore.connect(DATABASE_URL, server_settings=settings, max_size=1)
    await store.close()
    return settings


async def drop_schema(server_settings: dict[str, str]) -> None:
    admin = await admin_connection()
    try:
        await admin.execute(f"DROP SCHEMA {server_settings['search_path']} CASCADE")
    finally:
        await admin.close()


async def same_schema(store: PostgresOrderStore) -> PostgresOrderStore:
    """Another store (another pool, as another process would have) on `store`'s schema."""
    return await PostgresOrderStore.connect(
        DATABASE_URL, server_settings=store.server_settings, apply_migrations=False, max_size=2
    )


async def create_database() -> str:
    """The URL of a new, empty database (drop it with `drop_database`)."""
    admin = await admin_connection()
    name = f"orderflow_test_{secrets.token_hex(4)}"
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return DATABASE_URL.rsplit("/", 1)[0] + "/" + name


async def drop_database(url: str) -> None:
    admin = await admin_connection()
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await admin.close()


def query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """Run one statement on the database at `url` directly (a connection of its own, from a
    test that blocks); its rows."""

    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
            return rows
        finally:
            await connection.close()

    return asyncio.run(run())
