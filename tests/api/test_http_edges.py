"""The rules every route shares, over both adapters, driven by the route table where a route
is concerned: 405 with Allow, HEAD as GET without the body, the Host (421) and Origin (403,
CORS) checks, and bodies (64 KiB, JSON only, complete, in time).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest

from orderflow.api.app import HttpSettings
from orderflow.api.http import MAX_BODY_BYTES, HTTPProblem, Request
from orderflow.runtime import Runtime
from orderflow.server import build_app
from orderflow.store.memory import InMemoryOrderStore
from tests.api.conftest import (
    ACCEPT_JSON,
    JSON_HEADERS,
    NO_SUCH_ID,
    RawResponse,
    Served,
    ServeFactory,
    asgi_exchange,
    assert_problem,
    create,
    raw_http,
    sample_path,
    status_of,
)
from tests.helpers import ORDER, ROUTES

# -- methods and HEAD ----------------------------------------------------------------------------

PATHS = sorted({route.path for route in ROUTES})


def allowed(path: str) -> set[str]:
    methods = {route.method for route in ROUTES if route.path == path}
    return methods | ({"HEAD"} if "GET" in methods else set())


@pytest.mark.parametrize("path", PATHS)
async def test_every_path_answers_405_with_allow_for_another_method(
    client: httpx.AsyncClient, path: str
) -> None:
    expected = allowed(path)
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - expected):
        response = await client.request(method, sample_path(path), headers=ACCEPT_JSON)
        assert_problem(response, 405, "method-not-allowed")
        assert set(response.headers["allow"].split(", ")) == expected, (method, path)
        assert response.headers["allow"] == ", ".join(sorted(expected))


# Answers that change from one request to the next (counters of requests): HEAD's length is
# checked against a GET's only for the others.
VOLATILE = {"/metrics"}


@pytest.mark.parametrize("path", sorted({r.path for r in ROUTES if r.method == "GET"}))
async def test_head_is_get_without_the_body(served: Served, path: str) -> None:
    """On every GET route (with an order that exists for {id}; a parameter naming another
    kind of resource may make both a 404, which must match too)."""
    client = served.client
    order_id = (await create(client))["id"]
    url = sample_path(path, order_id)
    got = await client.get(url, headers=ACCEPT_JSON)
    head = await client.head(url, headers=ACCEPT_JSON)
    assert head.status_code == got.status_code, (url, got.text)
    if re.search(r"\{(?!id\}|name\})", path) is None:
        assert got.status_code == 200, (url, got.text)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path not in VOLATILE:
        assert int(head.headers["content-length"]) == len(got.content) > 0
    if served.adapter == "asgi":  # httpx's ASGITransport drops a HEAD body: look at the app's
        headers = [("host", "127.0.0.1"), *ACCEPT_JSON.items()]
        raw = await asgi_exchange(served.app, "HEAD", url, headers, _no_body)
        assert (raw.status, raw.body) == (got.status_code, b"")
        if path not in VOLATILE:
            assert int(raw.headers["content-length"]) == len(got.content)


async def test_head_of_a_missing_order_is_404_without_a_body(client: httpx.AsyncClient) -> None:
    missing = await client.head(f"/orders/{NO_SUCH_ID}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.content == b""
    got = await client.get(f"/orders/{NO_SUCH_ID}")
    assert int(missing.headers["content-length"]) == len(got.content)


STREAMED = [r for r in ROUTES if r.method == "GET" and "text/event-stream" in r.also_media]


@pytest.mark.parametrize("route", STREAMED, ids=[r.path for r in STREAMED])
async def test_head_of_a_stream_ends_at_once_without_a_body(served: Served, route: Any) -> None:
    """A HEAD answers the stream's status and headers and ends: it must not stream on (to a
    client that reads no body) until the client goes away."""
    accept = [("host", "127.0.0.1"), ("accept", "text/event-stream")]
    if served.adapter == "asgi":  # a client that keeps its connection open, as keep-alive does
        asked: list[bool] = []

        async def receive() -> dict[str, Any]:
            if not asked:
                asked.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        head = await _within(5, asgi_exchange(served.app, "HEAD", route.path, accept, receive))
        status, headers, body = head.status, head.headers, head.body
    else:
        async with asyncio.timeout(5):
            answer = await served.client.head(route.path, headers=dict(accept[1:]))
        status, headers, body = answer.status_code, dict(answer.headers), answer.content
    assert (status, body) == (200, b"")
    assert headers["content-type"] == "text/event-stream"


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


# -- Host and Origin -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhostx"]
)
async def test_a_foreign_host_is_421_everywhere(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore, host: str
) -> None:
    headers = {"host": host}
    assert_problem(await client.get("/healthz", headers=headers), 421, "misdirected-request")
    posted = await client.post("/orders", json=ORDER, headers=headers)
    assert_problem(posted, 421, "misdirected-request")
    assert len(memory_store) == 0


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "127.0.0.1:1", "[::1]:8000"])
async def test_loopback_hosts_are_answered(client: httpx.AsyncClient, host: str) -> None:
    assert (await client.get("/healthz", headers={"host": host})).status_code == 200


async def test_any_host_is_answered_when_allowed_hosts_is_none(serve_api: ServeFactory) -> None:
    served = await serve_api(HttpSettings(allowed_hosts=None))
    response = await served.client.post(
        "/orders", json=ORDER, headers={"host": "orders.example.com"}
    )
    assert response.status_code == 201


FOREIGN = {"origin": "https://evil.example"}


async def test_a_foreign_origin_may_not_change_anything(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    created = await create(client)
    posted = await client.post("/orders", json=ORDER, headers=FOREIGN)
    assert_problem(posted, 403, "forbidden")
    deleted = await client.delete(f"/orders/{created['id']}", headers=FOREIGN)
    assert_problem(deleted, 403, "forbidden")
    cancelled = await client.post(f"/orders/{created['id']}/cancel", headers=FOREIGN)
    assert_problem(cancelled, 403, "forbidden")
    assert_problem(await client.post("/orders/cancel", json={}, headers=FOREIGN), 403)
    assert len(memory_store) == 1
    assert await status_of(client, created["id"]) == "pending"


async def test_a_foreign_origin_may_read_without_cors_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/orders", headers=FOREIGN)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_the_services_own_origin_may_change_things(served: Served) -> None:
    own = {"origin": served.origin}
    response = await served.client.post("/orders", json=ORDER, headers=own)
    assert response.status_code == 201
    deleted = await served.client.delete(response.headers["location"], headers=own)
    assert deleted.status_code == 200


DASHBOARD = "https://dash.example"


async def test_an_allowed_origin_may_change_things_and_gets_cors_headers(
    serve_api: ServeFactory,
) -> None:
    served = await serve_api(HttpSettings(allowed_origins=frozenset({DASHBOARD})))
    response = await served.client.post("/orders", json=ORDER, headers={"origin": DASHBOARD})
    assert response.status_code == 201
    assert response.headers.get_list("access-control-allow-origin") == [DASHBOARD]
    assert "origin" in response.headers["vary"].lower()
    read = await served.client.get("/orders", headers={"origin": DASHBOARD})
    assert read.headers.get_list("access-control-allow-origin") == [DASHBOARD]
    foreign = await served.client.post("/orders", json=ORDER, headers=FOREIGN)
    assert_problem(foreign, 403, "forbidden")
    assert "access-control-allow-origin" not in foreign.headers


async def test_a_preflight_from_an_allowed_origin_is_204_with_the_cors_headers(
    serve_api: ServeFactory,
) -> None:
    served = await serve_api(HttpSettings(allowed_origins=frozenset({DASHBOARD})))
    preflight = {
        "origin": DASHBOARD,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, idempotency-key",
    }
    response = await served.client.options("/orders", headers=preflight)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers.get_list("access-control-allow-origin") == [DASHBOARD]
    assert response.headers["access-control-allow-methods"] == "GET, HEAD, POST"
    allowed_headers = {
        h.strip() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "idempotency-key"} <= allowed_headers
    assert int(response.headers["access-control-max-age"]) > 0
    foreign = await served.client.options("/orders", headers={**preflight, **FOREIGN})
    assert_problem(foreign, 405, "method-not-allowed")
    assert "access-control-allow-origin" not in foreign.headers


# -- bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{bad json", JSON_HEADERS, 400),
        (b"", JSON_HEADERS, 400),
        (b'{"customer": "A"', JSON_HEADERS, 400),
        (b'{"customer": "\xff", "items": []}', JSON_HEADERS, 400),
        (b'{"customer": "A", "items": [{"name": "x", "quantity": 1}]}', {}, 415),
        (b"customer=A", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b"{}", {"content-type": "text/plain"}, 415),
        (b"{}", {"content-type": "text/json"}, 415),
        (b"{}", {"content-type": "application/notjson"}, 415),
        (b"x" * (MAX_BODY_BYTES + 1), JSON_HEADERS, 413),
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


async def test_a_body_of_exactly_64_kib_is_read(client: httpx.AsyncClient) -> None:
    body = json.dumps(ORDER).encode()
    body += b" " * (MAX_BODY_BYTES - len(body))
    assert len(body) == MAX_BODY_BYTES
    response = await client.post("/orders", content=body, headers=JSON_HEADERS)
    assert response.status_code == 201, response.text


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_streamed_body_over_64_kib_is_413(
    client: httpx.AsyncClient, memory_store: InMemoryOrderStore
) -> None:
    body = json.dumps(ORDER).encode() + b" " * MAX_BODY_BYTES
    parts = [body[i : i + 8192] for i in range(0, len(body), 8192)]
    response = await client.post("/orders", content=_chunks(*parts), headers=JSON_HEADERS)
    assert_problem(response, 413, "body-too-large")
    assert len(memory_store) == 0


async def test_a_streamed_body_under_the_limit_is_read_whole(client: httpx.AsyncClient) -> None:
    parts = (b'{"customer": "A", ', b'"items": [{"name": "x", "quantity": 1}]}')
    response = await client.post(
        "/orders",
        content=_chunks(*parts),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


async def test_a_structured_json_media_type_is_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", content=json.dumps(ORDER), headers={"content-type": "application/x+json"}
    )
    assert response.status_code == 201


HEAD_100 = (
    "POST /orders HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\nContent-Length: 100"
)
TEN_BYTES = b'{"custome '


async def test_a_body_shorter_than_its_content_length_is_400_and_stores_nothing(
    served: Served, memory_store: InMemoryOrderStore
) -> None:
    if served.adapter == "asgi":  # the client goes away after 10 of the 100 bytes
        messages = iter([
            {"type": "http.request", "body": TEN_BYTES, "more_body": True},
            {"type": "http.disconnect"},
        ])  # fmt: skip

        async def receive() -> dict[str, Any]:
            return next(messages)

        response = await asgi_exchange(served.app, "POST", "/orders", _headers(HEAD_100), receive)
    else:  # 10 of the 100 bytes, then the client shuts its write side
        assert served.port is not None
        response = await raw_http(served.port, HEAD_100, [TEN_BYTES], close_write=True)
    assert_problem(response, 400, "bad-request")
    assert len(memory_store) == 0


async def test_a_stalled_body_is_408_after_the_idle_timeout(
    serve_api: ServeFactory, memory_store: InMemoryOrderStore
) -> None:
    served = await serve_api(HttpSettings(idle_timeout_s=1))
    if served.adapter == "asgi":  # the rest of the body never comes

        async def receive() -> dict[str, Any]:
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": TEN_BYTES, "more_body": True}
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        sent: list[bool] = []
        exchange = asgi_exchange(served.app, "POST", "/orders", _headers(HEAD_100), receive)
        response = await _within(10, exchange)
    else:
        assert served.port is not None
        response = await raw_http(served.port, HEAD_100, [TEN_BYTES], timeout_s=10)
    assert_problem(response, 408, "request-timeout")
    assert len(memory_store) == 0


def _headers(head: str) -> list[tuple[str, str]]:
    lines = head.split("\n")[1:]
    return [(name.strip().lower(), value.strip()) for name, _, value in
            (line.partition(":") for line in lines)]  # fmt: skip


async def _within(seconds: float, awaitable: Awaitable[RawResponse]) -> RawResponse:
    """`awaitable`'s result, run as a task of its own (the app's body watchdog cancels the
    task reading the body)."""
    async with asyncio.timeout(seconds):
        return await asyncio.ensure_future(awaitable)


@pytest.mark.parametrize("server", ["rsgi", "asgi"])
async def test_a_cancel_from_outside_wins_over_a_late_body(server: str) -> None:
    """A shutdown that cancels a handler in the very moment its body is found late: the
    handler is cancelled (it does not go on with a 408 as if nothing else had happened)."""
    app = build_app(Runtime(), HttpSettings(idle_timeout_s=1))

    async def never() -> bytes:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    # granian's read is a future of its own; an ASGI read is a coroutine of the handler's task
    read_all = asyncio.get_running_loop().create_future if server == "rsgi" else never
    request = Request("POST", "/orders", "", {}, read_all, app)
    try:
        for outside in (False, True):
            handler = asyncio.create_task(app.read(request))
            await asyncio.sleep(0)  # the read has begun
            app.check_bodies()  # the watchdog finds it late...
            if outside:
                handler.cancel()  # ...as a shutdown cancels the handler
                with pytest.raises(asyncio.CancelledError):
                    await handler
            else:
                with pytest.raises(HTTPProblem) as problem:
                    await handler
                assert problem.value.problem.status == 408
    finally:
        app.close()
