"""The dashboard's page and files over HTTP (no browser): content types, caching, a 404 for
anything not in the package's fixed table, and the page open even with auth on."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources

import httpx
import pytest

from orderflow.api.app import HttpSettings
from orderflow.api.auth import Auth
from orderflow.dashboard import DASHBOARD_ROUTES, FILES
from orderflow.runtime import Runtime
from orderflow.server import build_app
from tests.helpers import ROUTES

MODULES = ("app", "api", "dom", "orders", "detail", "chart", "ops")
TYPES = {
    **{f"/dashboard/{name}.js": "text/javascript; charset=utf-8" for name in MODULES},
    "/dashboard/style.css": "text/css; charset=utf-8",
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app with auth on, its service not started: the dashboard needs neither."""
    app = build_app(Runtime(), HttpSettings(auth=Auth([("operate", "x" * 16)])))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def test_the_dashboard_routes_are_in_the_route_table() -> None:
    assert all(route in ROUTES for route in DASHBOARD_ROUTES)
    assert all(route.role is None and not route.needs_service for route in DASHBOARD_ROUTES)


@pytest.mark.parametrize("path", ["/", "/dashboard"])
async def test_the_page_is_served_open_with_links_to_versioned_files(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    linked = re.findall(r'(?:src|href)="(/dashboard/[^"?]+)\?v=([0-9a-f]{16})"', response.text)
    assert {file: FILES[file].version for file, _ in linked} == dict(linked)
    # The page links its entry module and its style; the modules app.js imports are asked for
    # by their plain names (revalidated each time), as an import cannot carry the version.
    assert set(dict(linked)) == {"/dashboard/app.js", "/dashboard/style.css"}
    assert set(FILES) == set(TYPES)
    assert '<script type="module"' in response.text
    assert "{{" not in response.text


@pytest.mark.parametrize("path", sorted(TYPES))
async def test_each_file_has_its_type_and_is_kept_for_good_by_its_versioned_name(
    client: httpx.AsyncClient, path: str
) -> None:
    name = path.rpartition("/")[2]
    packaged = resources.files("orderflow.dashboard").joinpath(name).read_bytes()
    plain = await client.get(path)
    assert plain.status_code == 200
    assert plain.content == packaged
    assert plain.headers["content-type"] == TYPES[path]
    assert plain.headers["cache-control"] == "no-cache"
    versioned = await client.get(path, params={"v": FILES[path].version})
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert versioned.headers["etag"] == plain.headers["etag"] == f'"{FILES[path].version}"'


async def test_a_held_version_is_304_without_a_body(client: httpx.AsyncClient) -> None:
    first = await client.get("/")
    etag = first.headers["etag"]
    for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get("/", headers={"if-none-match": held})
        assert again.status_code == 304, held
        assert again.content == b""
        assert again.headers["etag"] == etag
    changed = await client.get("/", headers={"if-none-match": '"other"'})
    assert changed.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/index.html",
        "/dashboard/__init__.py",
        "/dashboard/",
        "/dashboard/../api/docs.html",
        "/dashboard/%2e%2e%2fapi%2fdocs.html",
        "/dashboard/..%2f__init__.py",
        "/dashboard/app.js/x",
        "/dashboard/APP.JS",
    ],
)
async def test_nothing_but_the_known_files_is_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_only_get_and_head(client: httpx.AsyncClient) -> None:
    response = await client.post("/dashboard/app.js")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
