"""The API under test, served both ways: every test that takes `client` (or `served`, or
`serve_api`) runs once over ASGI (httpx.ASGITransport; the ASGI lifespan starts and stops the
runtime) and once over RSGI (the real embedded granian server of `orderflow.server.serve`, on a
free loopback port in the test's own event loop). Each test gets its own runtime and store.

Raw exchanges, for what httpx will not send: `raw_http` (a socket to the RSGI server) and
`asgi_exchange` (the ASGI app called with a `receive` the test controls).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from orderflow.api.app import HttpSettings, OrderflowApp
from orderflow.api.errors import PROBLEMS
from orderflow.domain import new_order_id
from orderflow.runtime import Runtime
from orderflow.server import bind, build_app, serve
from orderflow.settings import Settings
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import BASE_TIME, FakeShipper, ManualClock
from tests.helpers import ORDER

ADAPTERS = ("asgi", "rsgi")
JSON_HEADERS = {"content-type": "application/json"}
# What a JSON client sends; a route with a stream besides (GET /events) then answers a page.
ACCEPT_JSON = {"accept": "application/json"}
NO_SUCH_ID = new_order_id(BASE_TIME, 12345)  # well-formed, never stored
# granian's own log lines go to the root logger (pytest captures them), not to stdout.
GRANIAN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {},
    "handlers": {},
    "loggers": {
        name: {"handlers": [], "level": "WARNING", "propagate": True}
        for name in ("_granian", "granian.access")
    },
}
_STOP_TIMEOUT_S = 15.0


@dataclass
class Served:
    """One app being served: `client` talks to it over `adapter`; `runtime` is what it serves
    (`runtime.service` exists once started); `port` is the RSGI server's (None over ASGI)."""

    adapter: str
    app: OrderflowApp
    runtime: Runtime
    client: httpx.AsyncClient
    port: int | None = None

    @property
    def origin(self) -> str:
        """The service's own origin, as a page it served would send it."""
        return str(self.client.base_url).rstrip("/")


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def serve_api(
    adapter: str, memory_store: InMemoryOrderStore, shipper: FakeShipper, clock: ManualClock
) -> AsyncIterator[ServeFactory]:
    """A factory: `await serve_api(http=HttpSettings(...), **settings_fields)` serves a new
    OrderflowApp over the test's adapter, on the shared in-memory store, fake shipper and
    manual clock (shutdown_grace defaults to 0); everything it started is stopped at the end."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(http: HttpSettings | None = None, **fields: Any) -> Served:
            fields.setdefault("shutdown_grace", 0.0)
            fields.setdefault("process_timeout", 5.0)
            runtime = Runtime(Settings(**fields), store=memory_store, shipper=shipper, clock=clock)
            if adapter == "asgi":
                app = build_app(runtime, http, manage_runtime=True)
                return await stack.enter_async_context(serve_over_asgi(app))
            app = build_app(runtime, http)
            return await stack.enter_async_context(serve_over_rsgi(app))

        yield start


@pytest.fixture
async def served(serve_api: ServeFactory) -> Served:
    """The API with default settings (loopback hosts only, no auth), over each adapter."""
    return await serve_api()


@pytest.fixture
def client(served: Served) -> httpx.AsyncClient:
    """An httpx client of the API with default settings, over each adapter."""
    return served.client


@contextlib.asynccontextmanager
async def serve_over_asgi(app: OrderflowApp) -> AsyncIterator[Served]:
    """Serve `app` through httpx.ASGITransport, its ASGI lifespan run by asgi-lifespan."""
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://127.0.0.1"
        ) as client,
    ):
        yield Served("asgi", app, app.services, client)


@contextlib.asynccontextmanager
async def serve_over_rsgi(app: OrderflowApp) -> AsyncIterator[Served]:
    """Serve `app` with the real embedded granian (serve() starts and stops its runtime)."""
    sock = bind("127.0.0.1", 0)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(
            app.services,
            app,
            sock,
            idle_timeout_s=app.settings.idle_timeout_s,
            granian_logging=GRANIAN_LOGGING,
            on_ready=ready.set_result,
        ),
        name="orderflow-test-granian",
    )
    try:
        await asyncio.wait({ready, server}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():  # serve() ended before it listened: show why
            await server
            raise AssertionError("serve() returned before it was ready")
        port = ready.result()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield Served("rsgi", app, app.services, client, port)
    finally:
        await _stop_server(server)


async def _stop_server(server: asyncio.Task[None]) -> None:
    """Stop the embedded server as an operator would: SIGTERM, which serve() handles on this
    loop (granian stops, then the runtime). serve() offers no other public way to stop it; its
    handler is installed before serve() first yields after on_ready, so by now it is there."""
    if not server.done():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            server.cancel()  # no handler of serve()'s: a SIGTERM would end pytest itself
        else:
            signal.raise_signal(signal.SIGTERM)
    async with asyncio.timeout(_STOP_TIMEOUT_S):
        with contextlib.suppress(asyncio.CancelledError):
            await server


# -- raw exchanges ---------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawResponse(status, headers, body)


async def raw_http(
    port: int,
    head: str,
    chunks: Iterable[bytes] = (),
    *,
    close_write: bool = False,
    timeout_s: float = 10.0,
) -> RawResponse:
    """Send `head` (request line and headers, without the blank line) and `chunks` over a new
    connection to 127.0.0.1:`port`, shut the write side if `close_write`, and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n")
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        if close_write:
            writer.write_eof()
        data = b""
        async with asyncio.timeout(timeout_s):
            while b"\r\n\r\n" not in data:
                more = await reader.read(65536)
                if not more:
                    break
                data += more
            response = parse_response(data)
            wanted = int(response.headers.get("content-length", "0"))
            while len(response.body) < wanted:
                more = await reader.read(65536)
                if not more:
                    break
                data += more
                response = parse_response(data)
        return response
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def asgi_exchange(
    app: OrderflowApp,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    *,
    raw_path: bytes | None = None,
) -> RawResponse:
    """Call the ASGI app once with `receive`, as a server would, and collect the answer."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    status = 0
    response_headers: dict[str, str] = {}
    body = b""

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers.update(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
            )
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await app(scope, receive, send)
    return RawResponse(status, response_headers, body)


# -- assertions ------------------------------------------------------------------------------


def assert_problem(
    response: httpx.Response | RawResponse,
    status: int,
    kind: str | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    """`response` is an RFC 9457 problem of `status` (and type `kind`, and naming `field` as
    the one offending field, when given); returns its body (empty for a HEAD)."""
    if isinstance(response, RawResponse):
        code, headers, content = response.status, response.headers, response.body
    else:
        code, headers, content = response.status_code, response.headers, response.content
    assert code == status, (code, content)
    assert headers["content-type"] == "application/problem+json", headers
    if isinstance(response, httpx.Response) and response.request.method == "HEAD":
        assert content == b"", content  # the body a GET would get, without the body
        return {}
    body: dict[str, Any] = httpx.Response(200, content=content).json()
    assert body["status"] == status, body
    assert {"type", "title", "detail"} <= body.keys(), body
    assert all(isinstance(body[key], str) and body[key] for key in ("type", "title", "detail"))
    slug = body["type"].removeprefix("/problems/")
    assert body["type"] == f"/problems/{slug}", body
    assert slug in PROBLEMS, body  # a type whose page exists
    assert (PROBLEMS[slug].status, PROBLEMS[slug].title) == (status, body["title"]), body
    if kind is not None:
        assert slug == kind, body
    if field is not None:
        assert [e["field"] for e in body.get("errors") or []] == [field], body
    return body


async def create(
    client: httpx.AsyncClient, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Submit an order (ORDER unless `body`); returns the 201 answer's body."""
    response = await client.post("/orders", json=ORDER if body is None else body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def status_of(client: httpx.AsyncClient, order_id: str) -> str:
    """The order's status, from GET /orders/status/{id}."""
    response = await client.get(f"/orders/status/{order_id}")
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def sample_path(path: str, order_id: str = NO_SUCH_ID) -> str:
    """A concrete path for a route's template: `order_id` for {id}, a problem type for
    {name}, and for a parameter of another kind of resource a value that names none."""
    samples = {"id": order_id, "name": next(iter(PROBLEMS))}
    return re.sub(r"\{(\w+)\}", lambda m: samples.get(m.group(1), "x"), path)
