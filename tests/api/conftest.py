from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from orderflow.api.app import create_app
from orderflow.processor import Processor
from orderflow.service import OrderService
from orderflow.settings import Settings
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, ManualClock


@pytest.fixture
def service(
    memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> OrderService:
    processor = Processor(memory_store, shipper, clock, concurrency=4)
    return OrderService(memory_store, processor, clock)


@pytest.fixture
async def client(service: OrderService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, Settings(shutdown_grace=0))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as http,
    ):
        yield http
