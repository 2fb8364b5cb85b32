"""The stores under the contracts, over every backend (tests/backends.py): each test in this
folder takes `store` (an OrderStore) or `webhooks` (a WebhookStore) and runs once per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orderflow.store.base import OrderStore
from orderflow.webhooks.store import WebhookStore
from tests.backends import BACKENDS, open_store, webhook_store


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[OrderStore]:
    async with open_store(request.param) as opened:
        yield opened


@pytest.fixture(params=BACKENDS)
async def webhooks(request: pytest.FixtureRequest) -> AsyncIterator[WebhookStore]:
    async with open_store(request.param) as orders:
        yield webhook_store(orders)
