"""Every error of a bad request at once: a 422 (or a 400 for the query) lists each offending
field, by its path, in the one problem shape; a valid request is decoded by msgspec alone."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orderflow.api.validation import MAX_ERRORS
from orderflow.domain import MAX_PAGE


def fields(answer: httpx.Response) -> dict[str, str]:
    assert answer.headers["content-type"] == "application/problem+json"
    return {error["field"]: error["message"] for error in answer.json()["errors"]}


async def test_a_submit_with_three_problems_names_all_three(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/orders", json={"customer": "  ", "items": [{"name": "", "quantity": 0}]}
    )
    assert answer.status_code == 422
    body = answer.json()
    assert body["type"] == "/problems/invalid-request"
    assert body["errors"] == [
        {"field": "customer", "message": "must not be blank"},
        {"field": "items[0].name", "message": "must not be blank"},
        {"field": "items[0].quantity", "message": "0 is less than the minimum of 1"},
    ]
    assert body["detail"].startswith("customer: must not be blank; items[0].name")
    assert (await client.get("/orders")).json()["count"] == 0  # nothing changed


async def test_missing_unknown_and_mistyped_fields_are_all_named(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post(
        "/orders",
        json={"items": [{"name": "a", "quantity": 2.5}, {"nam": "b"}], "zz": 1},
    )
    assert answer.status_code == 422
    assert fields(answer) == {
        "customer": "required",
        "items[0].quantity": '2.5 is not of type "integer"',
        "items[1].name": "required",
        "items[1].quantity": "required",
        "items[1].nam": "not a field of this request",
        "zz": "not a field of this request",
    }


async def test_a_body_that_is_not_an_object_is_one_error(client: httpx.AsyncClient) -> None:
    answer = await client.post("/orders", json=[])
    assert answer.status_code == 422
    assert list(fields(answer)) == ["body"]


@pytest.mark.parametrize("path", ["/orders/retry", "/orders/cancel"])
async def test_a_bulk_body_names_every_bad_condition(client: httpx.AsyncClient, path: str) -> None:
    answer = await client.post(
        path, json={"from": "nope", "to": "2026-99-01", "reason": " ", "reason_contains": ""}
    )
    assert answer.status_code == 422
    assert fields(answer) == {
        "from": '"nope" is not a "date-time"',
        "to": '"2026-99-01" is not a "date-time"',
        "reason_contains": '"" is shorter than 1 character',
        "reason": "must not be blank",
    }


async def test_an_action_body_and_a_webhook_body_name_their_fields(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        "/orders", json={"customer": "c", "items": [{"name": "a", "quantity": 1}]}
    )
    order_id = created.json()["id"]
    action = await client.post(f"/orders/{order_id}/cancel", json={"reason": "\u0001", "x": 1})
    assert action.status_code == 422
    assert fields(action) == {
        "reason": "must not contain control characters",
        "x": "not a field of this request",
    }
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "pending"
    webhook = await client.post(
        "/webhooks", json={"url": "ftp://x", "secret": "nope", "types": ["x"]}
    )
    assert webhook.status_code == 422
    assert list(fields(webhook)) == ["url", "secret", "types[0]"]
    assert fields(webhook)["secret"] == "expected 'whsec_' and the base64 of a 24 to 64 byte key"
    assert (await client.get("/webhooks")).json()["count"] == 0


async def test_several_bad_query_parameters_are_all_named(client: httpx.AsyncClient) -> None:
    answer = await client.get(
        "/orders", params={"status": "lost", "limit": str(MAX_PAGE + 1), "from": "x", "y": "1"}
    )
    assert answer.status_code == 400
    assert answer.json()["type"] == "/problems/bad-request"
    found = fields(answer)
    assert found.keys() == {"status", "limit", "from", "y"}
    assert found["y"] == "not a parameter here"


async def test_one_bad_query_parameter_keeps_its_own_message(client: httpx.AsyncClient) -> None:
    answer = await client.get("/orders", params={"limit": "0"})
    assert answer.status_code == 400
    assert answer.json()["errors"] == [
        {"field": "limit", "message": f"not a whole number from 1 to {MAX_PAGE}"}
    ]


def _valid() -> dict[str, Any]:
    return {"customer": "John Doe", "items": [{"name": "Monster Energy", "quantity": 2}]}


async def test_a_valid_submit_is_still_accepted(client: httpx.AsyncClient) -> None:
    answer = await client.post("/orders", json=_valid())
    assert answer.status_code == 201


async def test_an_empty_optional_body_with_its_content_type_is_no_body(
    client: httpx.AsyncClient,
) -> None:
    """A generated client sends Content-Type: application/json with no body when an optional
    body is left out; that was a 400 (malformed JSON)."""
    order_id = (await client.post("/orders", json=_valid())).json()["id"]
    answer = await client.post(
        f"/orders/{order_id}/cancel", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"


async def test_several_bad_event_query_parameters_are_all_named(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get(
        "/events",
        params=[("type", "order.nope"), ("after", "x"), ("limit", "0"), ("status", "lost")],
        headers={"accept": "application/json"},
    )
    assert answer.status_code == 400
    assert fields(answer).keys() == {"type", "after", "limit", "status"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/orders", b'{"customer": 5, "items": [], "note": "\xff"}'),
        ("/orders/cancel", b'{"dry_run": 1, "reason": "\xff"}'),
        ("/orders/retry", b'{"ids": 7, "reason": "a\xfe"}'),
    ],
)
async def test_a_bad_field_before_bytes_that_are_not_utf8_is_a_400_saying_so(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    """msgspec stops at the first bad field, before the bad bytes; looking for every error
    meets them, and the answer says what is wrong with the body as a whole."""
    answer = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["detail"] == "the body is not UTF-8"


@pytest.mark.parametrize("path", ["/orders/retry", "/orders/cancel"])
async def test_ids_null_is_refused_not_read_as_every_order(
    client: httpx.AsyncClient, path: str
) -> None:
    for _ in range(2):
        await client.post(
            "/orders", json={"customer": "a", "items": [{"name": "b", "quantity": 1}]}
        )
    for dry_run in (True, False):
        answer = await client.post(path, json={"ids": None, "dry_run": dry_run})
        assert answer.status_code == 422
        assert "ids" in fields(answer)
    answer = await client.post("/orders/cancel", json={"dry_run": True})  # {} is every order
    assert answer.json()["count"] == 2
    statuses = {o["status"] for o in (await client.get("/orders")).json()["orders"]}
    assert statuses == {"pending"}  # nothing changed


async def test_a_body_of_thousands_of_errors_names_the_first_fifty_and_says_more(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post("/orders/cancel", json={"ids": [1] * 30_000})
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert len(errors) == MAX_ERRORS + 1
    assert errors[-1] == {
        "field": "body",
        "message": f"more errors not listed (the first {MAX_ERRORS} are)",
    }
    assert len(answer.content) < 10_000
    items = [{}] * 20_000
    answer = await client.post("/orders", json={"customer": "a", "items": items})
    assert answer.status_code == 422
    assert len(answer.json()["errors"]) <= MAX_ERRORS + 1
