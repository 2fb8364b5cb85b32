"""The headers a reviewer expects on every answer: `X-Content-Type-Options: nosniff` on every
one (JSON, problems, pages, files, streams, 304s, preflights), the dashboard's
Content-Security-Policy on every HTML page (the dashboard, /docs, /problems/*), /docs built
from files of its own with no inline code; and the Origin check comparing scheme, host and
port."""

from __future__ import annotations

import re
from importlib import resources

import httpx
import pytest

from orderflow.api.app import HttpSettings
from orderflow.api.assets import CONTENT_SECURITY_POLICY
from orderflow.api.errors import PROBLEMS
from orderflow.api.openapi import DOCS_FILES
from tests.api.conftest import (
    ACCEPT_JSON,
    JSON_HEADERS,
    Served,
    ServeFactory,
    assert_problem,
    create,
    sample_path,
    status_of,
)
from tests.helpers import ORDER, ROUTES

NOSNIFF = "nosniff"
HTML_ROUTES = sorted(route.path for route in ROUTES if route.media == "text/html")


def assert_nosniff(response: httpx.Response, where: str) -> None:
    assert response.headers.get_list("x-content-type-options") == [NOSNIFF], where


async def test_every_route_answers_with_nosniff_whatever_it_answers(
    client: httpx.AsyncClient,
) -> None:
    """JSON answers (and problems, 304s, files, streams) carried no X-Content-Type-Options:
    now every answer of every route does, once, with each method and HEAD."""
    for route in ROUTES:
        path = sample_path(route.path)
        methods = [route.method, "HEAD"] if route.method == "GET" else [route.method]
        for method in methods:
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            headers = {**ACCEPT_JSON, **JSON_HEADERS}
            response = await client.request(method, path, content=body, headers=headers)
            assert_nosniff(response, f"{method} {path} → {response.status_code}")


async def test_problems_and_the_answers_no_route_gives_carry_nosniff(
    serve_api: ServeFactory,
) -> None:
    """404 (no route), 405 (Allow), 421 (a foreign Host), 403 (a foreign Origin), a preflight,
    a 304, a created order's 201 with its Location, CORS headers, and a stream's headers."""
    served = await serve_api(HttpSettings(allowed_origins=frozenset({"https://dash.example"})))
    client = served.client
    answers = {
        "404": await client.get("/nowhere"),
        "405": await client.put("/orders"),
        "421": await client.get("/orders", headers={"host": "evil.example"}),
        "403": await client.post("/orders", json=ORDER, headers={"origin": "https://evil.test"}),
        "201": await client.post("/orders", json=ORDER),
        "cors": await client.get("/orders", headers={"origin": "https://dash.example"}),
        "preflight": await client.options(
            "/orders",
            headers={"origin": "https://dash.example", "access-control-request-method": "POST"},
        ),
    }
    page = await client.get("/docs")
    answers["304"] = await client.get("/docs", headers={"if-none-match": page.headers["etag"]})
    answers["stream"] = await client.head("/events", headers={"accept": "text/event-stream"})
    assert [answer.status_code for answer in answers.values()] == [
        404, 405, 421, 403, 201, 200, 204, 304, 200,
    ]  # fmt: skip
    assert answers["stream"].headers["content-type"] == "text/event-stream"
    for name, answer in answers.items():
        assert_nosniff(answer, name)


@pytest.mark.parametrize("path", HTML_ROUTES)
async def test_every_html_page_has_the_dashboards_content_security_policy(
    client: httpx.AsyncClient, path: str
) -> None:
    """/docs and /problems/* were HTML with no Content-Security-Policy (so no frame-ancestors
    either): every page has the dashboard's policy now, its own files only, and never in a
    frame."""
    paths = [f"/problems/{name}" for name in PROBLEMS] if "{" in path else [path]
    for concrete in paths:
        response = await client.get(concrete)
        assert response.status_code == 200, concrete
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, concrete
        assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert response.headers["referrer-policy"] == "no-referrer"
        assert_nosniff(response, concrete)


async def test_docs_is_a_page_with_its_own_files_and_no_inline_code(
    client: httpx.AsyncClient,
) -> None:
    """/docs filled itself from an inline script (with innerHTML); under the policy an inline
    script does not run. It links its script and style by their versions now, carries no
    inline script, style or handler, and builds its page with createElement/textContent."""
    page = await client.get("/docs")
    html = page.text
    linked = dict(re.findall(r'(?:src|href)="(/docs/[^"?]+)\?v=([0-9a-f]{16})"', html))
    assert linked == {path: asset.version for path, asset in DOCS_FILES.items()}
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None  # every script is a file
    assert "<style" not in html
    assert re.search(r"\s(?:on\w+|style)=", html) is None
    script = resources.files("orderflow.api").joinpath("docs.js").read_text()
    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script
    types = {
        "/docs/docs.js": "text/javascript; charset=utf-8",
        "/docs/docs.css": "text/css; charset=utf-8",
    }
    for path, asset in DOCS_FILES.items():
        plain = await client.get(path)
        assert (plain.status_code, plain.headers["content-type"]) == (200, types[path])
        assert plain.content == asset.body
        versioned = await client.get(path, params={"v": asset.version})
        assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert_nosniff(versioned, path)


@pytest.mark.parametrize("scheme", ["evil", "ftp", "ws", "file", "javascript"])
async def test_an_origin_with_the_services_host_but_another_scheme_may_not_change_anything(
    served: Served, scheme: str
) -> None:
    """`evil://127.0.0.1:port` passed as the service's own origin: only the host and port
    were compared. Scheme, host and port are now: only http and https with the exact host[:port]
    (a proxy in front may end TLS) are the service's own."""
    created = await create(served.client)
    host = served.origin.partition("://")[2]
    foreign = {"origin": f"{scheme}://{host}"}
    assert_problem(await served.client.post("/orders/process", headers=foreign), 403, "forbidden")
    cancel = await served.client.post(f"/orders/{created['id']}/cancel", headers=foreign)
    assert_problem(cancel, 403, "forbidden")
    assert await status_of(served.client, created["id"]) == "pending"


async def test_the_services_own_host_over_http_or_https_is_its_own_origin(served: Served) -> None:
    """A page served by this service (over http, or https behind a proxy that ends TLS) may
    change things; another port of the same host, or another host, may not."""
    host = served.origin.partition("://")[2]
    hostname = host.rpartition(":")[0] or host
    for origin in (f"http://{host}", f"https://{host}", f"HTTP://{host.upper()}"):
        response = await served.client.post("/orders", json=ORDER, headers={"origin": origin})
        assert response.status_code == 201, origin
    for origin in (f"http://{hostname}:1", f"https://{host}.evil.example", f"http://{host}/"):
        response = await served.client.post("/orders", json=ORDER, headers={"origin": origin})
        assert_problem(response, 403, "forbidden")
