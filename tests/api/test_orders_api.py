"""Every orders endpoint over both adapters (ASGI and granian's RSGI), and every error in one
problem+json shape: submit and idempotency, list, get, status, delete, cancel, retry, bulk
actions, stats, trigger, health and readiness, shutdown, the documents. The rules every route
shares (Host, Origin, methods, HEAD, bodies) are in test_http_edges.py."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest

from orderflow.api.errors import PROBLEMS
from orderflow.domain import OrderStatus
from orderflow.errors import StoreRefusedData
from orderflow.shipping import PermanentFailure
from orderflow.store.memory import InMemoryOrderStore
from tests.api.conftest import (
    JSON_HEADERS,
    NO_SUCH_ID,
    Served,
    ServeFactory,
    assert_problem,
    create,
    status_of,
)
from tests.conftest import FakeShipper, eventually, settled
from tests.helpers import ORDER, ROUTES

# The contract's words: what a retry's answer says while auto-process is off.
RETRY_NOTE = "retried orders wait in pending until POST /orders/process (auto-process is off)"


async def ship_pending(client: httpx.AsyncClient, store: InMemoryOrderStore) -> int:
    """Trigger processing and wait until nothing is processing; returns how many were taken."""
    response = await client.post("/orders/process")
    assert response.status_code == 202, response.text
    await settled(store)
    taken: int = response.json()["orders"]
    return taken


async def failed_order(
    client: httpx.AsyncClient, store: InMemoryOrderStore, shipper: FakeShipper, reason: str
) -> str:
    """The id of a new order that failed for good with `reason`."""
    order_id: str = (await create(client))["id"]
    shipper.fail_next(order_id, PermanentFailure(reason))
    await ship_pending(client, store)
    assert await status_of(client, order_id) == "failed"
    return order_id


# -- submit --------------------------------------------------------------------------------------


async def test_submit_answers_201_with_the_id_a_location_and_a_pending_order(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in response.headers
    body = response.json()
    assert body == {"id": body["id"], "status": "pending"}
    assert body["id"].startswith("order_")
    assert response.headers["location"] == f"/orders/{body['id']}"
    order = (await client.get(response.headers["location"])).json()
    assert order["customer"] == "John Doe"
    assert order["items"] == ORDER["items"]
    assert order["history"] == [{"status": "pending", "at": order["timestamp"]}]
    assert order["timestamp"].endswith("Z")
    assert order["updated_at"] == order["timestamp"]


async def test_names_are_stored_trimmed(client: httpx.AsyncClient) -> None:
    body = {"customer": " \u00a0Ada  ", "items": [{"name": " Tea ", "quantity": 1}]}
    created = await create(client, body)
    order = (await client.get(f"/orders/{created['id']}")).json()
    assert (order["customer"], order["items"][0]["name"]) == ("Ada", "Tea")


async def test_a_whole_number_sent_as_2_0_is_quantity_2(client: httpx.AsyncClient) -> None:
    created = await create(client, {"customer": "Ada", "items": [{"name": "Tea", "quantity": 2.0}]})
    response = await client.get(f"/orders/{created['id']}")
    assert response.json()["items"] == [{"name": "Tea", "quantity": 2}]
    assert b'"quantity":2}' in response.content  # an integer on the wire, not 2.0


async def test_a_name_of_exactly_200_characters_is_accepted(client: httpx.AsyncClient) -> None:
    created = await create(client, {"customer": "c" * 200, "items": [{"name": "x", "quantity": 1}]})
    assert (await client.get(f"/orders/{created['id']}")).json()["customer"] == "c" * 200


ITEM = {"name": "x", "quantity": 1}
BAD_BODIES: list[tuple[Any, str]] = [
    ({"customer": "A", "items": [{"name": "x", "quantity": "2"}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": True}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 2.5}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 0}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 1_000_001}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 1_000_001.0}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "x", "quantity": None}]}, "items[0].quantity"),
    ({"customer": "A", "items": [{"name": "  ", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "n" * 201, "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "a\u0000b", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "a\u007fb", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "a\u0085b", "quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"quantity": 1}]}, "items[0].name"),
    ({"customer": "A", "items": [{"name": "x"}]}, "items[0].quantity"),
    ({"customer": "A", "items": [ITEM, {"name": "\t", "quantity": 1}]}, "items[1].name"),
    ({"customer": "   ", "items": [ITEM]}, "customer"),
    ({"customer": "\u200b\u00a0", "items": [ITEM]}, "customer"),
    ({"customer": "A\nB", "items": [ITEM]}, "customer"),
    ({"customer": "A\u001bB", "items": [ITEM]}, "customer"),
    ({"customer": "c" * 201, "items": [ITEM]}, "customer"),
    ({"customer": 5, "items": [ITEM]}, "customer"),
    ({"items": [ITEM]}, "customer"),
    ({"customer": "A", "items": []}, "items"),
    ({"customer": "A", "items": [ITEM] * 101}, "items"),
    ({"customer": "A", "items": ITEM}, "items"),
    ({"customer": "A"}, "items"),
    ({"customer": "A", "items": [ITEM], "extra": 1}, "extra"),
    ({"customer": "A", "items": [{"name": "x", "quantity": 1, "sku": "1"}]}, "items[0].sku"),
    ([ORDER], "body"),
    ("order", "body"),
    (None, "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_every_wrong_field_is_422_naming_it_and_stores_nothing(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, body: Any, field: str
) -> None:
    response = await client.post("/orders", content=json.dumps(body), headers=JSON_HEADERS)
    assert_problem(response, 422, "invalid-request", field)
    assert len(memory_store) == 0


# -- idempotency ---------------------------------------------------------------------------------


async def test_the_same_key_and_body_replay_the_first_answer(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    key = {"idempotency-key": "checkout-42"}
    first = await client.post("/orders", json=ORDER, headers=key)
    again = await client.post("/orders", json=ORDER, headers=key)
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert len(memory_store) == 1


async def test_a_key_reused_with_another_body_is_422_idempotency_mismatch(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    key = {"idempotency-key": "checkout-42"}
    await create(client, headers=key)
    other = {"customer": "Someone Else", "items": [{"name": "Tea", "quantity": 1}]}
    assert_problem(
        await client.post("/orders", json=other, headers=key), 422, "idempotency-mismatch"
    )
    assert len(memory_store) == 1


async def test_different_keys_make_different_orders(client: httpx.AsyncClient) -> None:
    one = await create(client, headers={"idempotency-key": "a"})
    two = await create(client, headers={"idempotency-key": "b"})
    assert one["id"] != two["id"]


@pytest.mark.parametrize("key", ["", "has space", "k" * 256, "tab\there"])
async def test_a_malformed_idempotency_key_is_400(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, key: str
) -> None:
    response = await client.post("/orders", json=ORDER, headers={"idempotency-key": key})
    assert_problem(response, 400, "bad-request")
    assert len(memory_store) == 0


async def test_a_key_of_255_printable_characters_is_accepted(client: httpx.AsyncClient) -> None:
    await create(client, headers={"idempotency-key": "~" * 255})


# -- read ----------------------------------------------------------------------------------------


async def test_get_answers_the_full_order(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.get(f"/orders/{created['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json().keys() >= {
        "id", "customer", "items", "timestamp", "status", "updated_at", "history",
    }  # fmt: skip


async def test_status_answers_the_id_and_the_status(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.get(f"/orders/status/{created['id']}")
    assert response.status_code == 200
    assert response.json() == {"id": created["id"], "status": "pending"}


async def test_status_follows_the_order_through_cancel(client: httpx.AsyncClient) -> None:
    created = await create(client)
    await client.post(f"/orders/{created['id']}/cancel")
    response = await client.get(f"/orders/status/{created['id']}")
    assert response.json() == {"id": created["id"], "status": "cancelled"}


async def test_status_follows_the_order_through_shipping(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    ids = [(await create(client))["id"] for _ in range(3)]
    assert await ship_pending(client, memory_store) == 3
    for order_id in ids:
        assert await status_of(client, order_id) == "shipped"
    assert set(shipper.shipped) == set(ids)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/orders/{NO_SUCH_ID}"),
        ("GET", f"/orders/status/{NO_SUCH_ID}"),
        ("DELETE", f"/orders/{NO_SUCH_ID}"),
        ("POST", f"/orders/{NO_SUCH_ID}/cancel"),
        ("POST", f"/orders/{NO_SUCH_ID}/retry"),
        ("GET", "/orders/order_00000000000000000000000x"),
        ("GET", "/orders/status/nope"),
        ("DELETE", "/orders/nope"),
        ("POST", "/orders/nope/cancel"),
        ("GET", "/nowhere"),
        ("GET", "/orders/"),
        ("GET", "/orders/a/b/c"),
        ("GET", "/problems/"),
    ],
)
async def test_unknown_ids_and_routes_are_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_problem(await client.request(method, path), 404, "not-found")


@pytest.mark.parametrize(
    "path",
    [
        f"/orders/{NO_SUCH_ID}%00",
        "/orders/%00",
        f"/orders/status/{NO_SUCH_ID[:-1]}%00",
        "/orders/a%00b/cancel",
    ],
)
async def test_a_nul_in_an_id_is_404(client: httpx.AsyncClient, path: str) -> None:
    method = "POST" if path.endswith("/cancel") else "GET"
    assert_problem(await client.request(method, path), 404, "not-found")


async def test_an_encoded_slash_stays_inside_the_id_over_asgi(
    served: Served, memory_store: InMemoryOrderStore
) -> None:
    """`/orders/<id>%2Fcancel` names the order `<id>/cancel` (none), not the cancel route."""
    client = served.client
    order_id = (await create(client))["id"]
    got = await client.get(f"/orders/{order_id}%2Fcancel")
    posted = await client.post(f"/orders/{order_id}%2Fcancel")
    if served.adapter == "asgi":  # routed on raw_path: the %2F stays in the id
        assert_problem(got, 404, "not-found")
        assert_problem(posted, 405, "method-not-allowed")  # /orders/{id} takes no POST
        assert await status_of(client, order_id) == "pending"
    else:
        # KNOWN LIMITATION, not a fix to make here: granian's RSGI scope carries only the
        # percent-DECODED path, so the app sees /orders/<id>/cancel and cannot tell it from the
        # real cancel route. These asserts pin today's behaviour: when a granian release hands
        # RSGI apps the raw path, they fail, and this branch should become the ASGI one.
        assert_problem(got, 405, "method-not-allowed")
        assert got.headers["allow"] == "POST"
        assert posted.status_code == 200, posted.text  # ... and the order IS cancelled
        assert await status_of(client, order_id) == "cancelled"


# -- listing -------------------------------------------------------------------------------------


async def test_list_pages_by_time_with_a_cursor(client: httpx.AsyncClient) -> None:
    ids = [(await create(client))["id"] for _ in range(7)]
    seen: list[str] = []
    cursors: list[str | None] = []
    params: dict[str, Any] = {"limit": 3}
    for _ in range(5):
        response = await client.get("/orders", params=params)
        assert response.status_code == 200
        page = response.json()
        assert page["count"] == len(page["orders"]) <= 3
        seen += [o["id"] for o in page["orders"]]
        cursors.append(page["next_cursor"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids
    assert cursors[-1] is None
    assert len(cursors) == 3


async def test_list_of_nothing_is_an_empty_last_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/orders")
    assert response.json() == {"orders": [], "count": 0, "next_cursor": None}


async def test_list_from_is_inclusive_and_to_exclusive(client: httpx.AsyncClient) -> None:
    ids = [(await create(client))["id"] for _ in range(4)]
    orders = (await client.get("/orders")).json()["orders"]
    second, fourth = orders[1]["timestamp"], orders[3]["timestamp"]
    page = (await client.get("/orders", params={"from": second, "to": fourth})).json()
    assert [o["id"] for o in page["orders"]] == ids[1:3]
    same = (await client.get("/orders", params={"from": second, "to": second})).json()
    assert same["count"] == 0


async def test_list_reads_naive_times_as_utc_and_offsets_with_a_raw_plus(
    client: httpx.AsyncClient,
) -> None:
    await create(client)  # the test clock starts at 2026-01-01T00:00:00Z
    naive = (await client.get("/orders", params={"from": "2026-01-01T00:00:00"})).json()
    assert naive["count"] == 1
    naive_to = (await client.get("/orders", params={"to": "2026-01-01T00:00:00"})).json()
    assert naive_to["count"] == 0
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
    page = (await client.get("/orders", params={"status": "shipped"})).json()
    assert page["count"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("limit=", "limit"),
        ("limit=-1", "limit"),
        ("status=lost", "status"),
        ("status=PENDING", "status"),
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
        ("cursor=order_%00", "cursor"),
    ],
)
async def test_bad_query_parameters_are_400_naming_the_parameter(
    client: httpx.AsyncClient, query: str, field: str
) -> None:
    assert_problem(await client.get(f"/orders?{query}"), 400, "bad-request", field)


async def test_a_query_that_is_not_utf8_is_400(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/orders?status=%FF"), 400, "bad-request")


# -- delete, cancel, retry -----------------------------------------------------------------------


async def test_delete_a_pending_order(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.delete(f"/orders/{created['id']}")
    assert response.status_code == 200
    assert response.json() == {"message": "Order deleted"}
    assert_problem(await client.get(f"/orders/{created['id']}"), 404, "not-found")
    assert_problem(await client.delete(f"/orders/{created['id']}"), 404, "not-found")


@pytest.mark.parametrize("status", ["cancelled", "shipped", "failed"])
async def test_delete_is_409_unless_pending(
    client: httpx.AsyncClient,
    memory_store: InMemoryOrderStore,
    shipper: FakeShipper,
    status: str,
) -> None:
    order_id = (await create(client))["id"]
    if status == "cancelled":
        await client.post(f"/orders/{order_id}/cancel")
    else:
        if status == "failed":
            shipper.fail_next(order_id, PermanentFailure("address refused"))
        await ship_pending(client, memory_store)
    assert await status_of(client, order_id) == status
    assert_problem(await client.delete(f"/orders/{order_id}"), 409, "conflict")
    assert await status_of(client, order_id) == status


async def test_cancel_without_a_body_then_again_is_409(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.post(f"/orders/{created['id']}/cancel")
    assert response.status_code == 200
    assert response.json() == {"id": created["id"], "status": "cancelled"}
    assert_problem(await client.post(f"/orders/{created['id']}/cancel"), 409, "conflict")
    history = (await client.get(f"/orders/{created['id']}")).json()["history"]
    assert [entry["status"] for entry in history] == ["pending", "cancelled"]


async def test_cancel_with_a_reason_keeps_it_in_the_history(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.post(
        f"/orders/{created['id']}/cancel", json={"reason": "customer called"}
    )
    assert response.json() == {"id": created["id"], "status": "cancelled"}
    history = (await client.get(f"/orders/{created['id']}")).json()["history"]
    assert history[-1]["status"] == "cancelled"
    assert history[-1]["reason"] == "customer called"
    again = await client.post(f"/orders/{created['id']}/cancel", json={"reason": "twice"})
    assert_problem(again, 409, "conflict")


async def test_cancel_with_an_empty_json_body_is_a_cancel(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.post(f"/orders/{created['id']}/cancel", json={})
    assert response.json()["status"] == "cancelled"


async def test_cancel_a_shipped_order_is_409(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    created = await create(client)
    await ship_pending(client, memory_store)
    assert_problem(await client.post(f"/orders/{created['id']}/cancel"), 409, "conflict")
    assert await status_of(client, created["id"]) == "shipped"


@pytest.mark.parametrize(
    ("content", "headers", "status", "field"),
    [
        (b'{"reason": 5}', JSON_HEADERS, 422, "reason"),
        (json.dumps({"reason": "r" * 501}).encode(), JSON_HEADERS, 422, "reason"),
        (b'{"reason": "a\\u0000b"}', JSON_HEADERS, 422, "reason"),
        (b'{"reason": "two\\nlines"}', JSON_HEADERS, 422, "reason"),
        (b'{"reason": " "}', JSON_HEADERS, 422, "reason"),
        (b'{"why": "x"}', JSON_HEADERS, 422, "why"),
        (b"{bad", JSON_HEADERS, 400, None),
        (b'{"reason": "x"}', {"content-type": "text/plain"}, 415, None),
    ],
)
@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_a_bad_action_body_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    action: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    created = await create(client)
    response = await client.post(
        f"/orders/{created['id']}/{action}", content=content, headers=headers
    )
    assert_problem(response, status, field=field)
    assert await status_of(client, created["id"]) == "pending"


async def test_retry_sends_a_failed_order_back_to_pending_with_the_reason(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    order_id = await failed_order(client, memory_store, shipper, "address refused")
    response = await client.post(f"/orders/{order_id}/retry", json={"reason": "address fixed"})
    assert response.status_code == 200
    assert response.json() == {"id": order_id, "status": "pending", "note": RETRY_NOTE}
    history = (await client.get(f"/orders/{order_id}")).json()["history"]
    assert [(e["status"], e.get("reason")) for e in history] == [
        ("pending", None),
        ("processing", history[1].get("reason")),
        ("failed", "address refused"),
        ("pending", "address fixed"),
    ]
    assert await ship_pending(client, memory_store) == 1  # and it ships this time
    assert await status_of(client, order_id) == "shipped"


async def test_retry_without_a_body_records_an_operator_retry(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    order_id = await failed_order(client, memory_store, shipper, "address refused")
    response = await client.post(f"/orders/{order_id}/retry")
    assert response.json() == {"id": order_id, "status": "pending", "note": RETRY_NOTE}
    history = (await client.get(f"/orders/{order_id}")).json()["history"]
    assert (history[-1]["status"], history[-1]["reason"]) == ("pending", "retried by an operator")


@pytest.mark.parametrize("status", ["pending", "cancelled", "shipped"])
async def test_retry_is_409_unless_failed(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, status: str
) -> None:
    order_id = (await create(client))["id"]
    if status == "cancelled":
        await client.post(f"/orders/{order_id}/cancel")
    elif status == "shipped":
        await ship_pending(client, memory_store)
    assert_problem(await client.post(f"/orders/{order_id}/retry"), 409, "conflict")
    assert await status_of(client, order_id) == status


async def test_retry_twice_is_409_the_second_time(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    order_id = await failed_order(client, memory_store, shipper, "address refused")
    assert (await client.post(f"/orders/{order_id}/retry")).status_code == 200
    assert_problem(await client.post(f"/orders/{order_id}/retry"), 409, "conflict")


# -- bulk actions, stats, trigger ----------------------------------------------------------------


async def test_bulk_retry_takes_the_failed_orders_whose_reason_matches(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    timeouts = [await failed_order(client, memory_store, shipper, f"carrier Timeout {i}")
                for i in range(2)]  # fmt: skip
    refused = await failed_order(client, memory_store, shipper, "address refused")
    pending = (await create(client))["id"]
    response = await client.post(
        "/orders/retry", json={"reason_contains": "timeout", "reason": "carrier is back"}
    )
    assert response.status_code == 200
    assert response.json() == {"count": 2, "dry_run": False, "note": RETRY_NOTE}
    for order_id in timeouts:
        history = (await client.get(f"/orders/{order_id}")).json()["history"]
        assert history[-1]["status"] == "pending"
        assert history[-1]["reason"] == "carrier is back"
    assert await status_of(client, refused) == "failed"
    assert await status_of(client, pending) == "pending"
    again = await client.post("/orders/retry", json={"reason_contains": "timeout"})
    assert again.json() == {"count": 0, "dry_run": False, "note": RETRY_NOTE}


async def test_bulk_retry_of_everything_takes_every_failed_order(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    failed = [await failed_order(client, memory_store, shipper, r) for r in ("a", "b")]
    dry = await client.post("/orders/retry", json={"dry_run": True})
    assert dry.json() == {"count": 2, "dry_run": True}  # no note: a dry run retried nothing
    response = await client.post("/orders/retry", json={})
    assert response.json() == {"count": 2, "dry_run": False, "note": RETRY_NOTE}
    for order_id in failed:
        history = (await client.get(f"/orders/{order_id}")).json()["history"]
        assert history[-1]["reason"] == "retried in bulk by an operator"


async def test_bulk_cancel_takes_the_orders_created_in_the_range(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await create(client))["id"] for _ in range(4)]
    orders = (await client.get("/orders")).json()["orders"]
    window = {"from": orders[1]["timestamp"], "to": orders[3]["timestamp"], "reason": "recall"}
    response = await client.post("/orders/cancel", json=window)
    assert response.status_code == 200
    assert response.json() == {"count": 2, "dry_run": False}
    assert [await status_of(client, i) for i in ids] == [
        "pending", "cancelled", "cancelled", "pending",
    ]  # fmt: skip
    history = (await client.get(f"/orders/{ids[1]}")).json()["history"]
    assert history[-1]["reason"] == "recall"
    assert (await client.post("/orders/cancel", json=window)).json() == {
        "count": 0,
        "dry_run": False,
    }


async def test_bulk_cancel_of_everything_leaves_finished_orders_alone(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    shipped = (await create(client))["id"]
    await ship_pending(client, memory_store)
    pending = [(await create(client))["id"] for _ in range(2)]
    response = await client.post("/orders/cancel", json={})
    assert response.json() == {"count": 2, "dry_run": False}
    assert await status_of(client, shipped) == "shipped"
    history = (await client.get(f"/orders/{pending[0]}")).json()["history"]
    assert history[-1] == {
        "status": "cancelled", "at": history[-1]["at"],
        "reason": "cancelled in bulk by an operator",
    }  # fmt: skip


async def test_bulk_times_without_an_offset_are_utc(client: httpx.AsyncClient) -> None:
    await create(client)  # at 2026-01-01T00:00:00.000001Z
    early = {"to": "2026-01-01T00:00:00"}
    assert (await client.post("/orders/cancel", json=early)).json() == {
        "count": 0,
        "dry_run": False,
    }
    late = {"from": "2026-01-01T00:00:00", "to": "2026-01-01T01:00:00+01:00"}
    assert (await client.post("/orders/cancel", json=late)).json() == {"count": 0, "dry_run": False}
    assert (await client.post("/orders/cancel", json={"from": "2026-01-01T00:00:00"})).json() == {
        "count": 1,
        "dry_run": False,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": 5}, "to"),
        ({"reason_contains": ""}, "reason_contains"),
        ({"reason_contains": "\u0000"}, "reason_contains"),
        ({"reason": "r" * 501}, "reason"),
        ({"reason": "a\u0000b"}, "reason"),
        ({"from": "0001-01-01T00:00:00+14:00"}, "from"),
        ({"to": "9999-12-31T23:59:59-14:00"}, "to"),
        ({"status": "lost"}, "status"),
        ({"customer": ""}, "customer"),
        ({"customer": "c" * 201}, "customer"),
        ({"customer": "a\u0007"}, "customer"),
        ({"ids": []}, "ids"),
        ({"ids": ["order_x"] * 1001}, "ids"),
        ({"ids": [7]}, "ids[0]"),
        ({"ids": ["order_x"], "status": "failed"}, "ids"),
        ({"ids": ["order_x"], "customer": "Ann"}, "ids"),
        ({"ids": ["order_x"], "from": "2026-01-01T00:00:00Z"}, "ids"),
        ({"ids": ["order_x"], "reason_contains": "x"}, "ids"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"sort": "newest"}, "sort"),
    ],
)
@pytest.mark.parametrize("action", ["retry", "cancel"])
async def test_a_bad_bulk_body_is_422_naming_the_field(
    client: httpx.AsyncClient, action: str, body: dict[str, Any], field: str
) -> None:
    pending = (await create(client))["id"]
    response = await client.post(f"/orders/{action}", json=body)
    assert_problem(response, 422, "invalid-request", field)
    assert await status_of(client, pending) == "pending"


@pytest.mark.parametrize(
    "body",
    [
        {"from": "0001-01-01T00:00:00+14:00"},
        {"to": "9999-12-31T23:59:59-14:00"},
        {"from": "0001-01-01T00:00:00+00:01", "reason_contains": "down"},
    ],
)
@pytest.mark.parametrize("action", ["retry", "cancel"])
async def test_a_bulk_time_out_of_range_in_utc_is_a_422_as_the_query_says_400(
    client: httpx.AsyncClient,
    memory_store: InMemoryOrderStore,
    shipper: FakeShipper,
    action: str,
    body: dict[str, str],
) -> None:
    """`POST /orders/retry {"from": "0001-01-01T00:00:00+14:00"}` (or `to` in year 9999 west
    of UTC) answered 500 with an OverflowError traceback, where `GET /orders` said 400 "out of
    range". One rule reads every client's time now: the body's is a 422 naming the field, with
    the query's very words, and nothing moves."""
    failed = await failed_order(client, memory_store, shipper, "carrier down")
    pending = (await create(client))["id"]
    field = "from" if "from" in body else "to"
    response = await client.post(f"/orders/{action}", json=body)
    assert_problem(response, 422, "invalid-request", field)
    assert response.json()["errors"] == [{"field": field, "message": "out of range"}]
    query = await client.get("/orders", params={field: body[field]})
    assert_problem(query, 400, "bad-request", field)
    assert query.json()["errors"] == response.json()["errors"]
    assert (await status_of(client, failed), await status_of(client, pending)) == (
        "failed",
        "pending",
    )


async def test_a_reason_is_stored_trimmed(client: httpx.AsyncClient) -> None:
    """Reasons follow the name rules, trimming included, everywhere one is given."""
    created = await create(client)
    await client.post(f"/orders/{created['id']}/cancel", json={"reason": "  customer called\u00a0"})
    order = (await client.get(f"/orders/{created['id']}")).json()
    assert order["history"][-1]["reason"] == "customer called"
    other = await create(client)
    assert (await client.post("/orders/cancel", json={"reason": " recall "})).json() == {
        "count": 1,
        "dry_run": False,
    }
    order = (await client.get(f"/orders/{other['id']}")).json()
    assert order["history"][-1]["reason"] == "recall"


@pytest.mark.parametrize("action", ["retry", "cancel"])
async def test_a_bulk_action_needs_a_json_body(client: httpx.AsyncClient, action: str) -> None:
    assert_problem(await client.post(f"/orders/{action}"), 415, "unsupported-media-type")
    bad = await client.post(f"/orders/{action}", content=b"", headers=JSON_HEADERS)
    assert_problem(bad, 400, "bad-request")


async def test_stats_count_every_status_and_the_top_failure_reasons_first(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, shipper: FakeShipper
) -> None:
    empty = (await client.get("/orders/stats")).json()
    assert empty == {"by_status": {s.value: 0 for s in OrderStatus}, "failed_reasons": []}
    ids = [(await create(client))["id"] for _ in range(6)]
    await client.post(f"/orders/{ids[5]}/cancel")
    for order_id, reason in zip(ids[1:5], ["rare", "common", "common", "common"], strict=True):
        shipper.fail_next(order_id, PermanentFailure(reason))
    await ship_pending(client, memory_store)
    await create(client)
    response = await client.get("/orders/stats")
    assert response.status_code == 200
    assert response.json() == {
        "by_status": {"pending": 1, "processing": 0, "shipped": 1, "cancelled": 1, "failed": 4},
        "failed_reasons": [{"reason": "common", "count": 3}, {"reason": "rare", "count": 1}],
    }


async def test_trigger_is_202_with_the_number_of_orders_taken(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    for _ in range(3):
        await create(client)
    response = await client.post("/orders/process")
    assert response.status_code == 202
    assert response.json() == {"message": "Processing started", "orders": 3}
    await settled(memory_store)
    assert (await client.post("/orders/process")).json()["orders"] == 0


# -- health, readiness, shutdown -----------------------------------------------------------------


async def test_healthz_and_readyz_answer_200(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "auto_process": False})


async def test_with_auto_process_readyz_says_so_and_a_retry_carries_no_note(
    serve_api: ServeFactory,
) -> None:
    """A retried order waits for a trigger only while auto-process is off: the note (and the
    dashboard's hint, which reads `auto_process`) is for then alone."""
    client = (await serve_api(auto_process=True)).client
    ready = await client.get("/readyz")
    assert ready.json() == {"status": "ready", "auto_process": True}
    assert (await client.post("/orders/retry", json={})).json() == {"count": 0, "dry_run": False}


async def test_readyz_is_503_while_stopping_and_once_stopped(
    serve_api: ServeFactory, shipper: FakeShipper, memory_store: InMemoryOrderStore
) -> None:
    shipper.hold = True
    served = await serve_api(shutdown_grace=30.0)
    client = served.client
    assert (await client.get("/readyz")).status_code == 200
    order_id = (await create(client))["id"]
    await client.post("/orders/process")
    await shipper.started_event(order_id).wait()
    stopping = asyncio.create_task(served.runtime.stop())
    await eventually(lambda: served.runtime.service.stopping)
    assert not stopping.done()  # the held shipment keeps the stop going
    during = await client.get("/readyz")
    assert_problem(during, 503, "shutting-down")
    assert during.headers["retry-after"] == "1"
    assert (await client.get("/healthz")).status_code == 200  # alive, though not ready
    shipper.release(order_id)
    await stopping
    after = await client.get("/readyz")
    assert_problem(after, 503, "shutting-down")
    assert after.headers["retry-after"] == "1"
    assert (await memory_store.get_order(order_id)).status is OrderStatus.SHIPPED


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/orders", ORDER),
        ("GET", "/orders", None),
        ("GET", f"/orders/{NO_SUCH_ID}", None),
        ("POST", "/orders/process", None),
        ("POST", "/orders/cancel", {}),
        ("GET", "/orders/stats", None),
    ],
)
async def test_after_shutdown_the_store_routes_are_503_shutting_down_with_retry_after(
    served: Served, memory_store: InMemoryOrderStore, method: str, path: str, body: Any
) -> None:
    await served.runtime.stop()
    assert not served.runtime.started
    response = await served.client.request(method, path, json=body)
    assert_problem(response, 503, "shutting-down")
    assert response.headers.get("retry-after") == "1"
    assert len(memory_store) == 0
    assert (await served.client.get("/healthz")).status_code == 200


async def test_unexpected_errors_are_a_generic_500(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(order_id: str) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(served.runtime.service, "get_order_json", boom)
    response = await served.client.get(f"/orders/{NO_SUCH_ID}")
    body = assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text
    assert body["detail"] == "An unexpected error occurred."


async def test_a_value_the_store_refuses_is_a_500_with_its_traceback_logged_not_a_503(
    served: Served,
    memory_store: InMemoryOrderStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A value PostgreSQL refused was answered 503 store-unavailable with Retry-After, as if
    the database were down. It is a bug (a value the service let through): a generic 500, no
    Retry-After, and the traceback in the log."""
    created = await create(served.client)

    async def refusing(*args: Any, **kwargs: Any) -> None:
        raise StoreRefusedData("the database refused a value: CharacterNotInRepertoireError")

    monkeypatch.setattr(memory_store, "transition", refusing)
    with caplog.at_level(logging.ERROR, logger="orderflow.api"):
        response = await served.client.post(f"/orders/{created['id']}/cancel")
    body = assert_problem(response, 500, "internal-error")
    assert body["detail"] == "An unexpected error occurred."
    assert "retry-after" not in response.headers
    [logged] = [r for r in caplog.records if r.name == "orderflow.api"]
    assert logged.exc_info is not None
    assert logged.exc_info[0] is StoreRefusedData


# -- documents -----------------------------------------------------------------------------------


async def test_openapi_json_and_docs_are_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert {route.path for route in ROUTES} == document["paths"].keys()
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"] == "text/html; charset=utf-8"
    assert b"/openapi.json" in docs.content


@pytest.mark.parametrize("slug", sorted(PROBLEMS))
async def test_every_problem_type_has_a_page(client: httpx.AsyncClient, slug: str) -> None:
    response = await client.get(f"/problems/{slug}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert PROBLEMS[slug].title.encode() in response.content
    assert f"/problems/{slug}".encode() in response.content


async def test_an_unknown_problem_type_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/problems/no-such-problem"), 404, "not-found")


async def test_a_reversed_time_range_holds_no_orders(client: httpx.AsyncClient) -> None:
    """[from, to) with from after to is empty: an empty page, and a bulk action moves nothing
    (the OpenAPI document cannot say "from before to", so neither is an error)."""
    await create(client)
    reversed_range = {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    page = await client.get("/orders", params=reversed_range)
    assert page.status_code == 200
    assert page.json() == {"orders": [], "count": 0, "next_cursor": None}
    for action in ("retry", "cancel"):
        moved = await client.post(f"/orders/{action}", json=reversed_range)
        assert {k: v for k, v in moved.json().items() if k != "note"} == {
            "count": 0,
            "dry_run": False,
        }
