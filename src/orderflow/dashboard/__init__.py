"""The dashboard: one page (``GET /`` and ``GET /dashboard``) that watches and steers the service
through its own HTTP API, in plain JavaScript with no build step. Its files are read from the
package once, at import, into a fixed table; each file is a route of its own, so a request never
names a file to read, and a path not in the table is the router's 404.

Imported by `orderflow.api.routes`, at its end: it builds `Route`s, so the route table's module
must be (nearly) done by then.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from orderflow.api.http import Request, Response
from orderflow.api.routing import Handler, Route

if TYPE_CHECKING:
    from orderflow.api.app import OrderflowApp

_CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}
# The page is asked for again each time (a 304 while it has not changed); it names its files
# with their content's hash, so a file asked for by that name may be kept for good.
_REVALIDATE = "no-cache"
_IMMUTABLE = "public, max-age=31536000, immutable"
_NOSNIFF = ("x-content-type-options", "nosniff")
_PAGE_HEADERS = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
)


@dataclass(frozen=True)
class Asset:
    """One file as served: its bytes, its content type, and a strong ETag of its content."""

    body: bytes
    content_type: str
    version: str  # a hash of the content, for the ETag and for the page's links

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        extension = name.rpartition(".")[2]
        return cls(body, _CONTENT_TYPES[extension], hashlib.sha256(body).hexdigest()[:16])

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    def answer(self, request: Request, cache_control: str, *extra: tuple[str, str]) -> Response:
        """200 with the file, or 304 when the client holds this very version (If-None-Match)."""
        validators = [("etag", self.etag), ("cache-control", cache_control)]
        held = request.headers.get("if-none-match")
        if held is not None and _matches(held, self.etag):
            return Response(304, b"", validators)
        headers = [("content-type", self.content_type), *validators, _NOSNIFF, *extra]
        return Response(200, self.body, headers)


def _matches(if_none_match: str, etag: str) -> bool:
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in (etag, "*") for tag in candidates)


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


# The only files served: path → file.
FILES: dict[str, Asset] = {
    f"/dashboard/{name}": Asset.of(name, _read(name)) for name in ("app.js", "style.css")
}


def _page() -> Asset:
    html = _read("index.html").decode()
    for path, asset in FILES.items():
        html = html.replace("{{" + path + "}}", f"{path}?v={asset.version}")
    if "{{" in html:
        raise RuntimeError("index.html links a file the dashboard does not serve")
    return Asset.of("index.html", html.encode())


PAGE = _page()


def _serving(name: str, path: str | None) -> Handler:
    """A handler named `name` (each route's OpenAPI operationId) answering the page, or the file
    at `path`."""

    async def handler(app: OrderflowApp, request: Request) -> Response:
        if path is None:
            return PAGE.answer(request, _REVALIDATE, *_PAGE_HEADERS)
        asset = FILES[path]
        versioned = request.query == f"v={asset.version}"
        return asset.answer(request, _IMMUTABLE if versioned else _REVALIDATE)

    handler.__name__ = handler.__qualname__ = name
    return handler


def _route(path: str, name: str, summary: str, asset: Asset, file: str | None) -> Route:
    return Route(
        "GET",
        path,
        _serving(name, file),
        summary,
        role=None,
        media=asset.content_type.partition(";")[0],
        needs_service=False,
    )


DASHBOARD_ROUTES: tuple[Route, ...] = (
    _route("/", "dashboard_root", "The dashboard (as at /dashboard)", PAGE, None),
    _route(
        "/dashboard",
        "dashboard",
        "The dashboard: orders by status, throughput, live orders, actions",
        PAGE,
        None,
    ),
    *(
        _route(
            path,
            "dashboard_" + path.rpartition("/")[2].replace(".", "_"),
            f"The dashboard's {path.rpartition('/')[2]}",
            asset,
            path,
        )
        for path, asset in FILES.items()
    ),
)

__all__ = ["DASHBOARD_ROUTES", "FILES", "PAGE", "Asset"]
