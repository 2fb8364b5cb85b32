"""Search and sort through GET /orders (customer, order, sort), and bulk actions by ids, by the
listing's filters, and as a dry run: their answers, their 422s (which change nothing), and the
same answers from every store."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orderflow.domain import Event, Hold
from orderflow.runtime import Runtime
from orderflow.server import build_app
from orderflow.settings import Settings
from orderflow.store.memory import InMemoryOrderStore
from tests.api.conftest import NO_SUCH_ID, assert_problem, create, serve_over_asgi, status_of
from tests.backends import BACKENDS, open_store
from tests.conftest import FakeShipper, ManualClock

# What a retry's answer notes while auto-process is off (as the tests' service runs).
RETRY_NOTE = "retried orders wait in pending until POST /orders/process (auto-process is off)"

NAMES = [
    "Straße Süd", "STRASSER", "strand", "Ærøskøbing Kro", "ærø", "Aeroflot", "Σωκράτης",
    "σίσυφος", "ΣΊΣΥΦΟΣ", "Юрий", "юлия", "İstanbul", "ǅemal", "ﬁne Foods", "Zoë",
]  # fmt: skip
SEARCHES = ["STRASSE", "ÆRØ", "aer", "ΣΊΣ", "σωκ", "юр", "Ю", "ǆ", "FI", "zo", "ZOË", "q"]


def order_of(customer: str) -> dict[str, Any]:
    return {"customer": customer, "items": [{"name": "Widget", "quantity": 1}]}


async def listed(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every order GET /orders answers for `params`, page after page."""
    found: list[dict[str, Any]] = []
    params = {"limit": 2, **params}
    for _ in range(100):
        response = await client.get("/orders", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["count"] == len(page["orders"]) <= params["limit"]
        found += page["orders"]
        if page["next_cursor"] is None:
            return found
        params["cursor"] = page["next_cursor"]
    raise AssertionError("the pages never end")


def expected(text: str, *, newest: bool = False) -> list[str]:
    names = [name for name in NAMES if name.casefold().startswith(text.casefold())]
    return names[::-1] if newest else names


async def test_a_customer_is_found_by_a_prefix_in_any_case(client: httpx.AsyncClient) -> None:
    for name in NAMES:
        await create(client, order_of(name))
    for text in SEARCHES:
        found = await listed(client, customer=text)
        assert [o["customer"] for o in found] == expected(text), text
    assert [o["customer"] for o in await listed(client, customer="STRASSE")] == [
        "Straße Süd", "STRASSER",
    ]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_store_answers_a_search_beyond_ascii_alike(backend: str) -> None:
    """The same orders, the same searches, the same answers (oldest and newest first, page by
    page) from memory, SQLite and PostgreSQL: each key is Python's casefold, kept by each."""
    async with open_store(backend) as store:
        runtime = Runtime(
            Settings(shutdown_grace=0.0), store=store, shipper=FakeShipper(), clock=ManualClock()
        )
        async with serve_over_asgi(build_app(runtime, manage_runtime=True)) as served:
            client = served.client
            for name in NAMES:
                await create(client, order_of(name))
            for text in SEARCHES:
                for sort in ("oldest", "newest"):
                    found = await listed(client, customer=text, sort=sort)
                    assert [o["customer"] for o in found] == expected(
                        text, newest=sort == "newest"
                    ), (text, sort)


async def test_an_order_is_found_by_its_id_or_a_tail_of_8_characters(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await create(client, order_of(name)))["id"] for name in NAMES[:4]]
    for text in (ids[2], ids[2][-8:], ids[2][-12:]):
        assert [o["id"] for o in await listed(client, order=text)] == [ids[2]]
    assert await listed(client, order=ids[2][-8:], customer="zzz") == []
    assert await listed(client, order=ids[2][-8:], status="shipped") == []
    assert await listed(client, order="not-an-id-at-all") == []  # no id ends so: none
    assert await listed(client, order="ORDER_" + ids[2][6:]) == []  # ids are lower case


async def test_newest_first_pages_onward_in_that_order(client: httpx.AsyncClient) -> None:
    ids = [(await create(client))["id"] for _ in range(7)]
    first = (await client.get("/orders", params={"sort": "newest", "limit": 3})).json()
    assert [o["id"] for o in first["orders"]] == ids[:-4:-1]
    assert first["next_cursor"] == "-" + ids[-3]
    found = await listed(client, sort="newest", limit=3)
    assert [o["id"] for o in found] == ids[::-1]
    assert [o["id"] for o in await listed(client, sort="oldest", limit=3)] == ids
    window = {"from": found[5]["timestamp"], "to": found[1]["timestamp"], "sort": "newest"}
    assert [o["id"] for o in await listed(client, **window)] == ids[4:0:-1]


async def test_a_cursor_of_the_other_sort_is_a_422(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await create(client)
    oldest = (await client.get("/orders", params={"limit": 1})).json()["next_cursor"]
    newest = (await client.get("/orders", params={"limit": 1, "sort": "newest"})).json()
    for sort, cursor in (("newest", oldest), ("oldest", newest["next_cursor"])):
        response = await client.get("/orders", params={"sort": sort, "cursor": cursor})
        assert_problem(response, 422, "invalid-request", "cursor")
    response = await client.get("/orders", params={"cursor": newest["next_cursor"]})
    assert_problem(response, 422, "invalid-request", "cursor")


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"customer": ""}, 422, "customer"),
        ({"customer": "c" * 201}, 422, "customer"),
        ({"customer": "a\u0007b"}, 422, "customer"),
        ({"order": "abc"}, 422, "order"),
        ({"order": "1234567"}, 422, "order"),
        ({"order": "x" * 201}, 422, "order"),
        ({"sort": "sideways"}, 400, "sort"),
        ({"cursor": "-nope"}, 400, "cursor"),
    ],
)
async def test_a_bad_search_is_refused_naming_its_parameter(
    client: httpx.AsyncClient, params: dict[str, str], status: int, field: str
) -> None:
    kind = "invalid-request" if status == 422 else "bad-request"
    assert_problem(await client.get("/orders", params=params), status, kind, field)


async def test_a_customer_of_200_characters_and_an_order_of_8_are_taken(
    client: httpx.AsyncClient,
) -> None:
    assert await listed(client, customer="c" * 200, order="01234567") == []


# -- bulk -----------------------------------------------------------------------------------------


async def test_bulk_cancel_by_ids_skips_unknown_ids_and_finished_orders(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    ids = [(await create(client))["id"] for _ in range(3)]
    await memory_store.transition(ids[2], Event.CANCEL, clock.now())
    body = {"ids": [ids[0], NO_SUCH_ID, ids[2], ids[1], ids[0], "nonsense"], "reason": "recall"}
    dry = await client.post("/orders/cancel", json={**body, "dry_run": True})
    assert dry.json() == {"count": 2, "dry_run": True}
    assert [await status_of(client, i) for i in ids] == ["pending", "pending", "cancelled"]
    done = await client.post("/orders/cancel", json=body)
    assert done.json() == {"count": 2, "dry_run": False}
    assert [await status_of(client, i) for i in ids] == ["cancelled"] * 3
    history = (await client.get(f"/orders/{ids[0]}")).json()["history"]
    assert history[-1]["reason"] == "recall"
    assert (await client.post("/orders/cancel", json=body)).json()["count"] == 0


async def test_bulk_retry_by_ids_takes_only_failed_orders(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    ids = [(await create(client))["id"] for _ in range(2)]
    await memory_store.claim_pending(clock.now(), 1)  # ids[0] → processing, held here
    [held] = await memory_store.acquire("test", 1, 30.0)
    assert held.parcel.id == ids[0]
    hold = Hold("test", held.token)
    await memory_store.transition(ids[0], Event.FAIL, clock.now(), "down", hold=hold)
    response = await client.post("/orders/retry", json={"ids": ids})
    assert response.json() == {"count": 1, "dry_run": False, "note": RETRY_NOTE}
    assert [await status_of(client, i) for i in ids] == ["pending", "pending"]
    history = (await client.get(f"/orders/{ids[0]}")).json()["history"]
    assert history[-1]["reason"] == "retried in bulk by an operator"


async def test_bulk_cancel_by_customer_and_status_with_a_dry_run_first(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, clock: ManualClock
) -> None:
    ids = {name: (await create(client, order_of(name)))["id"] for name in NAMES}
    await memory_store.claim_pending(clock.now(), 1)  # "Straße Süd" → processing, held here
    await memory_store.acquire("test", 1, 30.0)
    body: dict[str, Any] = {"customer": "STRASSE", "status": "pending"}
    dry = await client.post("/orders/cancel", json={**body, "dry_run": True})
    assert dry.json() == {"count": 1, "dry_run": True}
    assert await status_of(client, ids["STRASSER"]) == "pending"
    assert (await client.post("/orders/cancel", json=body)).json()["count"] == 1
    assert await status_of(client, ids["STRASSER"]) == "cancelled"
    assert await status_of(client, ids["Straße Süd"]) == "processing"
    assert await status_of(client, ids["strand"]) == "pending"
    everyone = await client.post("/orders/cancel", json={"customer": "ß", "dry_run": True})
    assert everyone.json() == {"count": 0, "dry_run": True}  # "ss" starts no name
    retry = await client.post("/orders/retry", json={"status": "pending"})
    # Retry takes failed orders only (and notes that auto-process is off).
    assert retry.json() == {"count": 0, "dry_run": False, "note": RETRY_NOTE}


@pytest.mark.parametrize(
    "extra",
    [{"status": "pending"}, {"customer": "Str"}, {"from": "2000-01-01T00:00:00Z"},
     {"to": "2100-01-01T00:00:00Z"}, {"reason_contains": "x"}],
)  # fmt: skip
async def test_ids_with_a_filter_is_a_422_and_changes_nothing(
    client: httpx.AsyncClient, extra: dict[str, str]
) -> None:
    order_id = (await create(client, order_of("Straße")))["id"]
    response = await client.post("/orders/cancel", json={"ids": [order_id], **extra})
    assert_problem(response, 422, "invalid-request", "ids")
    assert await status_of(client, order_id) == "pending"


async def test_more_than_1000_ids_is_a_422_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    order_id = (await create(client))["id"]
    response = await client.post("/orders/cancel", json={"ids": [order_id] * 1001})
    assert_problem(response, 422, "invalid-request", "ids")
    assert await status_of(client, order_id) == "pending"
    accepted = await client.post("/orders/cancel", json={"ids": [order_id] * 1000})
    assert accepted.json() == {"count": 1, "dry_run": False}
