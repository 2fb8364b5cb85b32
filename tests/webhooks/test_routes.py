"""The webhook routes through the ASGI app (httpx.ASGITransport; the lifespan starts the
runtime): create, list, show, delete, the deliveries log, replay, validation, roles, and the
OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from standardwebhooks import Webhook

from orderflow.api.app import HttpSettings, OrderflowApp
from orderflow.api.auth import Auth
from orderflow.domain import Item
from orderflow.runtime import Runtime
from orderflow.settings import Settings
from orderflow.signing import SECRET_PATTERN
from orderflow.store.memory import InMemoryOrderStore
from orderflow.webhooks.model import URL_PATTERN, WEBHOOK_ID_PATTERN
from tests.conftest import FakeShipper, ManualClock, eventually
from tests.webhooks.conftest import FAST
from tests.webhooks.receiver import SECRET, Receiver

OPERATE, READ = "o" * 16, "r" * 16
Api = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def api() -> Api:
    """`async with api(**settings) as client`: the app over a new in-memory runtime."""

    @asynccontextmanager
    async def serve(
        http: HttpSettings | None = None,
        store: InMemoryOrderStore | None = None,
        **fields: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(**{"shutdown_grace": 0.0, **FAST, **fields})
        store = InMemoryOrderStore() if store is None else store  # an empty store is falsy
        runtime = Runtime(settings, store=store, shipper=FakeShipper(), clock=ManualClock())
        app = OrderflowApp(runtime, http, manage_runtime=True)
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://127.0.0.1"
            ) as client,
        ):
            client.runtime = runtime  # type: ignore[attr-defined]
            yield client

    return serve


async def test_a_subscription_is_created_shown_listed_and_deleted(
    api: Api, receiver: Receiver
) -> None:
    async with api() as client:
        created = await client.post("/webhooks", json={"url": receiver.url})
        assert created.status_code == 201, created.text
        body = created.json()
        assert re.fullmatch(WEBHOOK_ID_PATTERN, body["id"])
        assert created.headers["location"] == f"/webhooks/{body['id']}"
        assert re.fullmatch(SECRET_PATTERN, body["secret"])  # generated
        Webhook(body["secret"])  # a key standardwebhooks takes
        assert body["url"] == receiver.url
        assert (body["types"], body["ordered"], body["disabled"]) == ([], True, False)
        assert body["cursor"] == 0
        assert body["next_attempt_at"] is None

        shown = (await client.get(f"/webhooks/{body['id']}")).json()
        assert "secret" not in shown  # only the answer to the create shows it
        assert shown == {k: v for k, v in body.items() if k != "secret"}
        listed = (await client.get("/webhooks")).json()
        assert listed == {"webhooks": [shown], "count": 1}

        deleted = await client.delete(f"/webhooks/{body['id']}")
        assert (deleted.status_code, deleted.json()) == (200, {"message": "Webhook deleted"})
        for path in (f"/webhooks/{body['id']}", f"/webhooks/{body['id']}/deliveries"):
            gone = await client.get(path)
            assert gone.status_code == 404
            assert gone.json()["type"] == "/problems/not-found"
        assert (await client.get("/webhooks/not-an-id")).status_code == 404


async def test_a_created_subscription_delivers_signed_with_its_secret(
    api: Api, receiver: Receiver
) -> None:
    async with api() as client:
        answer = await client.post(
            "/webhooks",
            json={"url": receiver.url, "secret": SECRET, "types": ["order.submitted"]},
        )
        assert answer.json()["secret"] == SECRET
        assert answer.json()["types"] == ["order.submitted"]
        order = await client.post(
            "/orders", json={"customer": "Ada", "items": [{"name": "W", "quantity": 1}]}
        )
        await eventually(lambda: receiver.acked)
        assert receiver.received[0].body["data"]["id"] == order.json()["id"]

        async def logged() -> Any:  # the receiver answers before the deliverer records it
            log = (await client.get(f"/webhooks/{answer.json()['id']}/deliveries")).json()
            return log if log["count"] else None

        log = await eventually(logged)
        assert log["count"] == 1
        [attempt] = log["deliveries"]
        assert attempt["webhook_id"] == "evt_1"
        assert attempt["status_code"] == 204
        assert attempt["outcome"] == "delivered"
        assert attempt["error"] is None
        assert set(attempt) == {
            "seq", "webhook_id", "attempt", "status_code", "latency_ms", "error", "outcome", "at",
        }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "http://user:pw@example.com/x"}, "url"),
        ({"url": "http://example.com/x#frag"}, "url"),
        ({"url": "http://example.com:0/"}, "url"),
        ({"url": "http://example.com/\n"}, "url"),
        ({"url": "http://example.com/" + "a" * 2000}, "url"),
        ({"url": "http://example.com/", "secret": "whsec_short"}, "secret"),
        ({"url": "http://example.com/", "secret": "not-whsec-" + "A" * 40}, "secret"),
        ({"url": "http://example.com/", "types": ["order.lost"]}, "types[0]"),
        ({"url": "http://example.com/", "ordered": "yes"}, "ordered"),
        ({"url": "http://example.com/", "colour": "red"}, "colour"),
        ({}, "url"),
    ],
)
async def test_an_invalid_subscription_is_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    async with api() as client:
        answer = await client.post("/webhooks", json=body)
        assert answer.status_code == 422, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == [field]
        assert "whsec_short" not in answer.text
        assert (await client.get("/webhooks")).json()["count"] == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://hooks.example.com",
        "https://a-b.example.com:65535/p/a/t/h?x=1&y=%20",
        "http://localhost/",
    ],
)
async def test_http_and_https_urls_are_accepted(api: Api, url: str) -> None:
    assert re.fullmatch(URL_PATTERN, url)
    async with api() as client:
        assert (await client.post("/webhooks", json={"url": url})).status_code == 201


async def test_replay_moves_the_cursor_and_410s_past_the_kept_log(
    api: Api, receiver: Receiver
) -> None:
    async with api(store=InMemoryOrderStore(event_retention=2)) as client:
        runtime: Runtime = client.runtime  # type: ignore[attr-defined]
        webhook = (await client.post("/webhooks", json={"url": receiver.url})).json()
        for n in range(3):
            await runtime.service.submit(f"c{n}", (Item("W", 1),))
        replayed = await client.post(f"/webhooks/{webhook['id']}/replay", json={"after_seq": 2})
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["cursor"] == 2
        beyond = await client.post(f"/webhooks/{webhook['id']}/replay", json={"after_seq": 99})
        assert beyond.json()["cursor"] == 3
        no_body = await client.post(f"/webhooks/{webhook['id']}/replay")
        assert no_body.status_code == 200
        gone = await client.post(f"/webhooks/{webhook['id']}/replay", json={"after_seq": 0})
        assert gone.status_code == 410
        assert gone.json()["type"] == "/problems/gone"
        whole = await client.post(f"/webhooks/{webhook['id']}/replay", json={"after_seq": 3.0})
        assert (whole.status_code, whole.json()["cursor"]) == (200, 3)
        for bad in (-1, 2.5, "3", True):
            refused = await client.post(
                f"/webhooks/{webhook['id']}/replay", json={"after_seq": bad}
            )
            assert refused.status_code == 422, bad
            assert refused.json()["errors"][0]["field"] == "after_seq"
        unknown = await client.post("/webhooks/wh_000000000000000000000000/replay", json={})
        assert unknown.status_code == 404


async def test_webhook_routes_need_the_operate_role(api: Api, tmp_path: Any) -> None:
    auth = Auth([("operate", OPERATE), ("read", READ)])
    async with api(HttpSettings(auth=auth)) as client:
        assert (await client.get("/webhooks")).status_code == 401
        read = {"authorization": f"Bearer {READ}"}
        assert (await client.get("/webhooks", headers=read)).status_code == 403
        posted = await client.post("/webhooks", json={"url": "http://x/"}, headers=read)
        assert posted.status_code == 403
        operate = {"authorization": f"Bearer {OPERATE}"}
        assert (await client.get("/webhooks", headers=operate)).status_code == 200


async def test_the_openapi_document_shows_the_webhook_routes_and_rules(api: Api) -> None:
    async with api() as client:
        document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    assert set(paths["/webhooks"]) == {"get", "head", "post"}
    assert set(paths["/webhooks/{webhook_id}"]) == {"get", "head", "delete"}
    assert "post" in paths["/webhooks/{webhook_id}/replay"]
    assert "get" in paths["/webhooks/{webhook_id}/deliveries"]
    schemas = document["components"]["schemas"]
    create = schemas["WebhookCreate"]["properties"]
    assert create["url"]["pattern"] == URL_PATTERN
    assert create["secret"]["anyOf"][0]["pattern"] == SECRET_PATTERN
    assert "secret" not in schemas["WebhookPublic"]["properties"]
    assert "secret" in schemas["WebhookCreated"]["properties"]
