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

from orderflow.api.app import HttpSettings
from orderflow.api.auth import Auth
from orderflow.domain import Item
from orderflow.runtime import Runtime
from orderflow.server import build_app
from orderflow.settings import Settings
from orderflow.signing import SECRET_PATTERN
from orderflow.store.memory import InMemoryOrderStore
from orderflow.webhooks.model import URL_PATTERN, WEBHOOK_ID_PATTERN
from tests.conftest import FakeShipper, ManualClock, eventually
from tests.helpers import FAST
from tests.receivers import SECRET, Names, Receiver

OPERATE, READ = "o" * 16, "r" * 16
Api = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def api() -> Api:
    """`async with api(**settings) as client`: the app over a new in-memory runtime (FAST:
    webhooks may go to loopback), whose webhook names resolve through `resolver` (`Names`:
    none by default)."""

    @asynccontextmanager
    async def serve(
        http: HttpSettings | None = None,
        store: InMemoryOrderStore | None = None,
        resolver: Names | None = None,
        **fields: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(**{"shutdown_grace": 0.0, **FAST, **fields})
        store = InMemoryOrderStore() if store is None else store  # an empty store is falsy
        runtime = Runtime(
            settings,
            store=store,
            shipper=FakeShipper(),
            clock=ManualClock(),
            webhook_resolver=Names() if resolver is None else resolver,
        )
        app = build_app(runtime, http, manage_runtime=True)
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
        assert (body["cursor"], body["lag"]) == (0, 0)
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


LONG_LABEL = "a" * 64


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"http://{LONG_LABEL}/hook", "each label of the host (between dots) must be at most 63"),
        (f"http://{LONG_LABEL}.example/hook", "each label of the host"),
        ("http://" + ".".join(["a" * 63] * 4) + "/", "the host must be at most 253 characters"),
        ("http://0/", "the host 0 is an IPv4 address in a short form: write it as 0.0.0.0"),
        ("http://0x7f000001/", "short form: write it as 127.0.0.1"),
        ("http://2130706433:8080/", "short form: write it as 127.0.0.1"),
        ("http://0177.0.0.1/", "short form: write it as 127.0.0.1"),
        ("http://127.1/", "short form: write it as 127.0.0.1"),
    ],
)
async def test_a_url_that_cannot_be_sent_is_422_naming_the_url(
    api: Api, url: str, why: str
) -> None:
    """A 64-character label was accepted (201), then jammed its subscription; the numeric
    shorthands of an address were accepted as if they were names."""
    async with api() as client:
        answer = await client.post("/webhooks", json={"url": url})
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert error["field"] == "url"
        assert why in error["message"]
        assert (await client.get("/webhooks")).json()["count"] == 0


FORBIDDEN = [
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://172.16.5.4/", "172.16.5.4 is a private address"),
    ("http://192.168.1.1/", "192.168.1.1 is a private address"),
    ("http://100.64.0.1/", "100.64.0.1 is a shared address"),
    ("http://127.0.0.1:5432/", "127.0.0.1 is a loopback address"),
    ("http://0.0.0.0:8000/", "0.0.0.0 is an unspecified address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
    ("http://localhost:8000/metrics", "localhost resolves to 127.0.0.1, a loopback address"),
    ("http://internal.test/", "internal.test resolves to 10.0.0.7, a private address"),
    ("http://v6.test/", "v6.test resolves to ::1, a loopback address"),
    ("http://ula.test/", "ula.test resolves to fd00::7, a private address"),
    ("http://linklocal6.test/", "linklocal6.test resolves to fe80::1, a link-local address"),
    ("http://mapped.test/", "mapped.test resolves to ::ffff:10.0.0.7, a private address"),
    ("http://mixed.test/", "mixed.test resolves to 192.168.0.9, a private address"),
]
NAMES = Names(
    {
        "localhost": ["127.0.0.1"],
        "internal.test": ["10.0.0.7"],
        "v6.test": ["::1"],
        "ula.test": ["fd00::7"],
        "linklocal6.test": ["fe80::1"],
        "mapped.test": ["::ffff:10.0.0.7"],
        "mixed.test": ["93.184.216.34", "192.168.0.9"],
        "public.test": ["93.184.216.34", "2606:2800:220:1::"],
    }
)


@pytest.mark.parametrize(("url", "why"), FORBIDDEN)
async def test_a_url_to_an_internal_address_is_422_naming_why(api: Api, url: str, why: str) -> None:
    """SSRF: such subscriptions were accepted, and the service then called its own database,
    metrics and API, or a cloud's metadata service, on every event."""
    async with api(resolver=NAMES, webhook_allow_private=False) as client:
        answer = await client.post("/webhooks", json={"url": url})
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["type"] == "/problems/invalid-request"
        [error] = body["errors"]
        assert error["field"] == "url"
        assert error["message"].startswith(why + "; webhooks may not go to loopback, private")
        assert "--webhook-allow-private" in error["message"]
        assert (await client.get("/webhooks")).json()["count"] == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://public.test/hooks",  # resolves to public addresses only
        "https://not-yet.test/hooks",  # does not resolve (yet): checked at every connection
        "http://93.184.216.34/hook",
    ],
)
async def test_a_url_to_a_public_or_unresolved_destination_is_accepted(api: Api, url: str) -> None:
    async with api(resolver=NAMES, webhook_allow_private=False) as client:
        answer = await client.post("/webhooks", json={"url": url})
        assert answer.status_code == 201, answer.text  # and nothing is sent: no event comes


@pytest.mark.parametrize(("url", "_why"), FORBIDDEN)
async def test_allow_private_accepts_internal_addresses(api: Api, url: str, _why: str) -> None:
    async with api(resolver=NAMES, webhook_allow_private=True) as client:
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
        # The lag is the newest seq (3) less the cursor, as the answer is made.
        assert (replayed.json()["cursor"], replayed.json()["lag"]) == (2, 1)
        beyond = await client.post(f"/webhooks/{webhook['id']}/replay", json={"after_seq": 99})
        assert (beyond.json()["cursor"], beyond.json()["lag"]) == (3, 0)
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
    assert re.fullmatch(create["url"]["pattern"], f"http://{'a' * 63}/hook")
    assert not re.fullmatch(create["url"]["pattern"], f"http://{LONG_LABEL}/hook")
    assert "253" in create["url"]["description"]
    assert "private" in create["url"]["description"]
    assert create["secret"]["anyOf"][0]["pattern"] == SECRET_PATTERN
    assert "secret" not in schemas["WebhookPublic"]["properties"]
    assert "secret" in schemas["WebhookCreated"]["properties"]
