"""GET /orders/throughput and GET /instances: the store's minute counts and the processors
that beat in it, through the API, on the test's manual clock."""

from __future__ import annotations

import httpx

from orderflow.shipping import PermanentFailure
from orderflow.store.base import InstanceBeat
from orderflow.store.memory import InMemoryOrderStore
from tests.api.conftest import Served, ServeFactory, create
from tests.conftest import FakeShipper, ManualClock, settled

# The manual clock starts at 2026-01-01T00:00:00Z: the window ends with that minute.
WINDOW = {"from": "2025-12-31T00:01:00Z", "to": "2026-01-01T00:00:00Z"}
# No heartbeat but the one at the start within a test: the clock decides who is live.
QUIET = {"heartbeat_interval": 3600.0, "lease_timeout": 10_800.0}


async def ship_pending(client: httpx.AsyncClient, store: InMemoryOrderStore) -> None:
    assert (await client.post("/orders/process")).status_code == 202
    await settled(store)


async def test_throughput_is_empty_over_the_last_24_hours_at_first(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/orders/throughput")
    assert response.status_code == 200
    assert response.json() == {**WINDOW, "minutes": []}


async def test_throughput_counts_submitted_shipped_and_failed_by_minute_oldest_first(
    client: httpx.AsyncClient,
    memory_store: InMemoryOrderStore,
    shipper: FakeShipper,
    clock: ManualClock,
) -> None:
    ids = [(await create(client))["id"] for _ in range(3)]
    clock.advance(90)  # 00:01:30
    shipper.fail_next(ids[0], PermanentFailure("no stock"))
    await ship_pending(client, memory_store)
    await create(client)
    clock.advance(60)  # 00:02:30: nothing happens in it
    body = (await client.get("/orders/throughput")).json()
    assert body == {
        "from": "2025-12-31T00:03:00Z",
        "to": "2026-01-01T00:02:00Z",
        "minutes": [
            {"minute": "2026-01-01T00:00:00Z", "submitted": 3, "shipped": 0, "failed": 0},
            {"minute": "2026-01-01T00:01:00Z", "submitted": 1, "shipped": 2, "failed": 1},
        ],
    }
    clock.advance(24 * 3600 - 120)  # 2026-01-02T00:00:30: the first minute left the window
    body = (await client.get("/orders/throughput")).json()
    assert (body["from"], body["to"]) == ("2026-01-01T00:01:00Z", "2026-01-02T00:00:00Z")
    assert [m["minute"] for m in body["minutes"]] == ["2026-01-01T00:01:00Z"]


async def test_instances_lists_this_processor_live_with_what_it_holds(
    serve_api: ServeFactory, clock: ManualClock
) -> None:
    served: Served = await serve_api(**QUIET)
    response = await served.client.get("/instances")
    assert response.status_code == 200
    [me] = response.json()["instances"]
    assert me["name"] == served.runtime.processor.owner
    assert (me["held"], me["in_flight"], me["live"]) == (0, 0, True)
    assert me["started_at"] <= me["last_heartbeat"]
    clock.advance(3 * 3600 + 1)  # three heartbeats missed
    [me] = (await served.client.get("/instances")).json()["instances"]
    assert me["live"] is False


async def test_instances_lists_live_ones_first_then_by_name(
    serve_api: ServeFactory, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    served = await serve_api(**QUIET)
    now = clock.now()
    for name in ("zz-stopped", "aa-stopped"):
        await memory_store.heartbeat(InstanceBeat(name, now, now, 5, 1, now))
        await memory_store.stop_instance(name, now)
    names = [i["name"] for i in (await served.client.get("/instances")).json()["instances"]]
    assert names == [served.runtime.processor.owner, "aa-stopped", "zz-stopped"]


async def test_a_stopped_processor_is_listed_not_live(
    serve_api: ServeFactory, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    served = await serve_api(**QUIET)
    owner = served.runtime.processor.owner
    await served.runtime.stop()
    [gone] = await memory_store.list_instances(clock.now())
    assert (gone.name, gone.live) == (owner, False)


async def test_prune_history_forgets_instances_silent_for_an_hour(
    served: Served, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    service = served.runtime.service
    assert len(await service.instances()) == 1
    clock.advance(3601)
    await memory_store.stop_instance(served.runtime.processor.owner, clock.now())
    assert await service.prune_history() == 1
    assert await service.instances() == []
