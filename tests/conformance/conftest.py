"""One `store` fixture over every backend: each test in this folder runs once per store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore

BACKENDS = ["memory"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[OrderStore]:
    backend: OrderStore
    if request.param == "memory":
        backend = InMemoryOrderStore()
    else:  # pragma: no cover - every backend is listed above
        raise AssertionError(request.param)
    try:
        yield backend
    finally:
        await backend.close()
