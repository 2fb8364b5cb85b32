"""Every endpoint through the real ASGI app, and every error in one problem+json shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orderflow.api.app import create_app
from orderflow.domain import OrderStatus
from orderflow.service import OrderService
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import FakeShipper, wait_until_settled

ORDER = {"customer": "John Doe", "items": [{"name": "Monster Energy", "quantity": 2}]}


async def create(client: httpx.AsyncClient, body: Any = None) -> dict[str, Any]:
    response = await client.post("/orders", json=ORDER if body is None else body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    if field is not None:
        assert [e["field"] for e in body["errors"]] == [field], body


async def test_submit_returns_the_id_and_a_location(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "pending"
    assert body["id"].startswith("order_")
    assert response.headers["location"] == f"/orders/{body['id']}"
    order = (await client.get(response.headers["location"])).json()
    assert order["customer"] == "John Doe"
    assert order["items"] == ORDER["items"]
    assert order["history"] == [{"status": "pending", "at": order["timestamp"]}]
    assert order["timestamp"].endswith("Z")
    assert order["updated_at"] == order["timestamp"]


async def test_names_are_trimmed(client: httpx.AsyncClient) -> None:
    body = {"customer": "  Ada  ", "items": [{"name": " Tea ", "quantity": 1}]}
    created = await create(client, body)
    order = (await client.get(f"/orders/{created['id']}")).json()
    assert (order["customer"], order["items"][0]["name"]) == ("Ada", "Tea")


async def test_status_endpoint(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.get(f"/orders/status/{created['id']}")
    assert response.json() == {"id": created["id"], "status": "pending"}


async def test_process_ships_every_pending_order(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    ids = [(await create(client))["id"] for _ in range(3)]
    response = await client.post("/orders/process")
    assert response.status_code == 202
    assert response.json() == {"message": "Processing started", "orders": 3}
    await wait_until_settled(memory_store)
    for order_id in ids:
        assert (await client.get(f"/orders/status/{order_id}")).json()["status"] == "shipped"
    assert set(shipper.shipped) == set(ids)


async def test_delete_a_pending_order(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.delete(f"/orders/{created['id']}")
    assert response.status_code == 200
    assert response.json() == {"message": "Order deleted"}
    assert_problem(await client.get(f"/orders/{created['id']}"), 404)


async def test_delete_a_non_pending_order_is_a_conflict(client: httpx.AsyncClient) -> None:
    created = await create(client)
    await client.post(f"/orders/{created['id']}/cancel")
    assert_problem(await client.delete(f"/orders/{created['id']}"), 409)
    assert (await client.get(f"/orders/{created['id']}")).status_code == 200


async def test_cancel_then_cancel_again(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.post(f"/orders/{created['id']}/cancel")
    assert response.json() == {"id": created["id"], "status": "cancelled"}
    assert_problem(await client.post(f"/orders/{created['id']}/cancel"), 409)


async def test_cancel_a_shipped_order_is_a_conflict(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    created = await create(client)
    await client.post("/orders/process")
    await wait_until_settled(memory_store)
    assert_problem(await client.post(f"/orders/{created['id']}/cancel"), 409)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/orders/order_00000000000000000000000x"),
        ("GET", "/orders/status/nope"),
        ("DELETE", "/orders/nope"),
        ("POST", "/orders/nope/cancel"),
        ("GET", "/nowhere"),
        ("GET", "/orders/"),
        ("GET", "/orders/a/b/c"),
    ],
)
async def test_unknown_ids_and_routes_are_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_problem(await client.request(method, path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/orders", "GET, HEAD, POST"),
        ("GET", "/orders/process", "POST"),
        ("PATCH", "/orders/x", "DELETE, GET, HEAD"),
        ("POST", "/orders/status/x", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/docs", "GET, HEAD"),
        ("POST", "/openapi.json", "GET, HEAD"),
        ("GET", "/orders/x/cancel", "POST"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)
    assert_problem(response, 405)
    assert response.headers["allow"] == allow


BAD_BODIES: list[tuple[Any, str]] = [
    ({"customer": "A", "items": [{"name": "x", "quantity": "2"}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 2.5}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": True}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 0}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 1_000_001}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "  ", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "n" * 201, "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "a\u0000b", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"quantity": 1}]}, "items[0].name"),
    ({"customer": "   ", "items": [{"name": "x", "quantity": 1}]}, "customer"),
    ({"customer": "\u200b", "items": [{"name": "x", "quantity": 1}]}, "customer"),
    ({"customer": "A\nB", "items": [{"name": "x", "quantity": 1}]}, "customer"),
    ({"customer": "c" * 201, "items": [{"name": "x", "quantity": 1}]}, "customer"),
    ({"customer": 5, "items": [{"name": "x", "quantity": 1}]}, "customer"),
    ({"customer": "A", "items": []}, "items"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 1}] * 101}, "items"),
    ({"customer": "A"}, "items"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 1}], "extra": 1}, "extra"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 1, "sku": "1"}]}, "items[0].sku"),
    ([ORDER], "body"),
    ("order", "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_every_wrong_field_is_422_and_stores_nothing(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, body: Any, field: str
) -> None:
    response = await client.post(
        "/orders",
        content=httpx.Request("POST", "/", json=body).content,
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 422, field)
    assert len(memory_store) == 0


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{bad json", {"content-type": "application/json"}, 400),
        (b"", {"content-type": "application/json"}, 400),
        (b'{"customer": "A"', {"content-type": "application/json"}, 400),
        (b'{"customer": "A", "items": [{"name": "x", "quantity": 1}]}', {}, 415),
        (b"customer=A", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b"{}", {"content-type": "text/plain"}, 415),
        (b"{}", {"content-type": "text/json"}, 415),
        (b"{}", {"content-type": "application/notjson"}, 415),
        (b'{"customer": "\xff", "items": []}', {"content-type": "application/json"}, 400),
        (b"x" * (64 * 1024 + 1), {"content-type": "application/json"}, 413),
    ],
)
async def test_malformed_requests_get_a_4xx_and_change_nothing(
    client: httpx.AsyncClient,
    memory_store: InMemoryOrderStore,
    content: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    response = await client.post("/orders", content=content, headers=headers)
    assert_problem(response, status)
    assert len(memory_store) == 0


async def test_a_streamed_body_over_64_kib_is_413(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 8192

    response = await client.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)
    assert len(memory_store) == 0


async def test_a_streamed_body_under_the_limit_is_read_whole(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"customer": "A", '
        yield b'"items": [{"name": "x", "quantity": 1}]}'

    response = await client.post(
        "/orders", content=chunks(), headers={"content-type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201


async def test_list_pages_by_time_with_a_cursor(client: httpx.AsyncClient) -> None:
    ids = [(await create(client))["id"] for _ in range(7)]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    for _ in range(5):
        page = (await client.get("/orders", params=params)).json()
        assert page["count"] == len(page["orders"])
        seen += [o["id"] for o in page["orders"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids


async def test_list_from_is_inclusive_and_to_exclusive(client: httpx.AsyncClient) -> None:
    ids = [(await create(client))["id"] for _ in range(4)]
    orders = (await client.get("/orders")).json()["orders"]
    first, third = orders[1]["timestamp"], orders[3]["timestamp"]
    page = (await client.get("/orders", params={"from": first, "to": third})).json()
    assert [o["id"] for o in page["orders"]] == ids[1:3]


async def test_list_reads_naive_times_as_utc_and_offsets_with_a_raw_plus(
    client: httpx.AsyncClient,
) -> None:
    await create(client)  # the test clock starts at 2026-01-01T00:00:00Z
    naive = (await client.get("/orders", params={"from": "2026-01-01T00:00:00"})).json()
    assert naive["count"] == 1
    later = await client.get("/orders?from=2026-01-01T01:00:00+01:00&to=2026-01-02T00:00:00Z")
    assert later.json()["count"] == 1
    before = await client.get("/orders?to=2026-01-01T00:00:00+00:30")
    assert before.json()["count"] == 0
    spaced = await client.get("/orders", params={"from": "2026-01-01 00:00:00Z"})
    assert spaced.json()["count"] == 1  # RFC 3339 allows a space for the T


async def test_list_filters_by_status(client: httpx.AsyncClient) -> None:
    keep = await create(client)
    drop = await create(client)
    await client.post(f"/orders/{drop['id']}/cancel")
    page = (await client.get("/orders", params={"status": "cancelled"})).json()
    assert [o["id"] for o in page["orders"]] == [drop["id"]]
    page = (await client.get("/orders", params={"status": "pending"})).json()
    assert [o["id"] for o in page["orders"]] == [keep["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("status=lost", "status"),
        ("colour=red", "colour"),
        ("from=1", "from"),  # a number is not a time
        ("from=253402300800", "from"),
        ("from=0001-01-01T00:00:00%2B01:00", "from"),  # before year 1 in UTC
        ("to=9999-12-31T23:59:59-01:00", "to"),  # after year 9999 in UTC
        ("limit=1e2", "limit"),
        ("limit=5.0", "limit"),
        ("limit=%D9%A3", "limit"),  # a digit, but not an ASCII one
        ("limit=1&limit=2", "limit"),
        ("cursor=abc", "cursor"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ],
)
async def test_bad_query_parameters_are_400(
    client: httpx.AsyncClient, query: str, field: str
) -> None:
    assert_problem(await client.get(f"/orders?{query}"), 400, field)


async def test_head_is_get_without_the_body(client: httpx.AsyncClient) -> None:
    order = await create(client)
    for path in ("/healthz", "/openapi.json", f"/orders/{order['id']}", "/orders"):
        got, head = await client.get(path), await client.head(path)
        assert head.status_code == got.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert int(head.headers["content-length"]) == len(got.content)
    missing = await client.head("/orders/order_x")
    assert missing.status_code == 404
    assert missing.content == b""


async def test_a_structured_json_media_type_is_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", content=json.dumps(ORDER), headers={"content-type": "application/x+json"}
    )
    assert response.status_code == 201


async def test_health_openapi_and_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert {"/orders", "/orders/{id}", "/orders/process"} <= document["paths"].keys()
    assert "OrderCreate" in document["components"]["schemas"]
    docs = await client.get("/docs")
    assert docs.headers["content-type"].startswith("text/html")
    assert b"/openapi.json" in docs.content


async def test_trigger_after_shutdown_is_503(service: OrderService) -> None:
    app = create_app(service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert_problem(await c.post("/orders/process"), 503)  # never started


async def test_requests_before_startup_are_503() -> None:
    from orderflow.settings import Settings

    app = create_app(settings=Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert_problem(await c.get("/healthz"), 503)


async def test_unexpected_errors_are_a_generic_500(
    client: httpx.AsyncClient, service: OrderService, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(order_id: str) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(service, "get_order", boom)
    response = await client.get("/orders/x")
    assert_problem(response, 500)
    assert "secret" not in response.text


async def test_app_built_from_settings_serves_and_snapshots(tmp_path: Any) -> None:
    from asgi_lifespan import LifespanManager

    from orderflow.settings import Settings

    snapshot = tmp_path / "orders.jsonl"
    settings = Settings(snapshot=str(snapshot), ship_delay=0, shutdown_grace=0)
    app = create_app(settings=settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        created = await create(c)
    assert created["id"] in snapshot.read_text()
    again = create_app(settings=settings)
    async with (
        LifespanManager(again),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=again), base_url="http://t") as c,
    ):
        assert (await c.get(f"/orders/{created['id']}")).status_code == 200


async def test_lifespan_startup_failure_is_reported() -> None:
    from orderflow.settings import Settings

    app = create_app(settings=Settings(database_url="nosuch://x"))
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed", "lifespan.shutdown.complete"]


def test_create_app_needs_a_service_or_settings() -> None:
    with pytest.raises(ValueError, match="service or settings"):
        create_app()


async def test_status_of_cancelled_orders_is_reported(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    created = await create(client)
    await client.post(f"/orders/{created['id']}/cancel")
    order = await memory_store.get_order(created["id"])
    assert order.status is OrderStatus.CANCELLED
    await asyncio.sleep(0)
