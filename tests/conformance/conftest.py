"""One `store` fixture over every backend: each test in this folder runs once per store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from tests.postgres import schema_store
from tests.sqlite import file_store

BACKENDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OrderStore]:
    if request.param == "memory":
        backend = InMemoryOrderStore()
        yield backend
        await backend.close()
    elif request.param == "sqlite":
        async with file_store(tmp_path) as sqlite:
            yield sqlite
    else:
        async with schema_store() as postgres:
            yield postgres
