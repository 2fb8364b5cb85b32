"""SQLite stores for tests: a new file in a folder of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from orderflow.store.sqlite import SqliteOrderStore


def sqlite_url(folder: Path, name: str = "orders.db") -> str:
    """The URL of a file `name` in `folder` (absolute: sqlite:////…)."""
    return f"sqlite:///{folder.absolute() / name}"


@asynccontextmanager
async def file_store(folder: Path, name: str = "orders.db") -> AsyncIterator[SqliteOrderStore]:
    """A SqliteOrderStore on a new file in `folder`, closed afterwards."""
    store = await SqliteOrderStore.open(sqlite_url(folder, name))
    try:
        yield store
    finally:
        await store.close()
