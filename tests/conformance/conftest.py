"""One `store` fixture over every backend: each test in this folder runs once per store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from tests.postgres import schema_store

BACKENDS = ["memory", "postgres"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[OrderStore]:
    if request.param == "memory":
        backend = InMemoryOrderStore()
        yield backend
        await backend.close()
    else:
        async with schema_store() as postgres:
            yield postgres
