"""Files served from the package (the dashboard's, the API's description): each read once, at
import, into an `Asset` that answers with a strong ETag (304 while the client holds that
version), and routes that serve them from a fixed table, so a request never names a file to
read. A page (HTML) is served with `PAGE_HEADERS`: a Content-Security-Policy that lets it run
only this service's own script and style files, and fetch only from this service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from orderflow.api.http import NOSNIFF, Request, Response
from orderflow.api.routing import Handler, Route

_CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}
# A page is asked for again each time (a 304 while it has not changed); it names its files with
# their content's hash, so a file asked for by that name may be kept for good.
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
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
        validators = [NOSNIFF, ("etag", self.etag), ("cache-control", cache_control)]
        held = request.headers.get("if-none-match")
        if held is not None and _matches(held, self.etag):
            return Response(304, b"", validators)
        return Response(200, self.body, [*validators, ("content-type", self.content_type), *extra])


def _matches(if_none_match: str, etag: str) -> bool:
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in (etag, "*") for tag in candidates)


def read(package: str, name: str) -> Asset:
    """The file `name` of `package`, as an Asset."""
    return Asset.of(name, resources.files(package).joinpath(name).read_bytes())


def linked_page(package: str, name: str, files: Mapping[str, Asset]) -> Asset:
    """The page `name` of `package`, each ``{{path}}`` in it (a path of `files`) replaced by
    the path with its file's version (``?v=…``).

    Raises:
        RuntimeError: the page names a file that is not in `files`.
    """
    html = resources.files(package).joinpath(name).read_text()
    for path, asset in files.items():
        html = html.replace("{{" + path + "}}", f"{path}?v={asset.version}")
    if "{{" in html:
        raise RuntimeError(f"{name} links a file that is not served")
    return Asset.of(name, html.encode())


def page_route(path: str, name: str, summary: str, page: Asset) -> Route[object]:
    """GET `path`: `page`, with `PAGE_HEADERS`; `name` is its handler's name (its OpenAPI
    operationId)."""

    async def handler(services: object, request: Request) -> Response:
        return page.answer(request, REVALIDATE, *PAGE_HEADERS)

    return _route(path, _named(handler, name), summary, page)


def file_routes(prefix: str, whose: str, files: Mapping[str, Asset]) -> tuple[Route[object], ...]:
    """GET each path of `files`: the file, kept for good when asked for by its versioned name
    (as the page links it). Each handler is named `prefix` + the file's name; `whose` names
    the page in each summary ("the dashboard's")."""
    return tuple(
        _route(path, _named(_serving(asset), prefix + _file_name(path)),
               f"{whose[0].upper()}{whose[1:]} {path.rpartition('/')[2]}", asset)
        for path, asset in files.items()
    )  # fmt: skip


def _serving(asset: Asset) -> Handler[object]:
    versioned = f"v={asset.version}"

    async def handler(services: object, request: Request) -> Response:
        return asset.answer(request, IMMUTABLE if request.query == versioned else REVALIDATE)

    return handler


def _file_name(path: str) -> str:
    return path.rpartition("/")[2].replace(".", "_")


def _named(handler: Handler[object], name: str) -> Handler[object]:
    handler.__name__ = handler.__qualname__ = name
    return handler


def _route(path: str, handler: Handler[object], summary: str, asset: Asset) -> Route[object]:
    return Route(
        "GET",
        path,
        handler,
        summary,
        role=None,
        media=asset.content_type.partition(";")[0],
        needs_service=False,
        returns=_WHAT[asset.content_type] + " (304 while the client holds this version)",
    )


_WHAT = {
    _CONTENT_TYPES["html"]: "The page, HTML",
    _CONTENT_TYPES["js"]: "The script",
    _CONTENT_TYPES["css"]: "The style sheet",
}
