"""The OpenAPI 3.1 document, generated from the routes served and the wire types (whose JSON
Schema msgspec derives from the same constants the validation uses), and the routes that serve
it and make it readable: /docs (a page with its script and style files, which builds itself
from the document), and one page per problem type."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import msgspec

from orderflow.api.assets import (
    PAGE_HEADERS,
    REVALIDATE,
    Asset,
    file_routes,
    linked_page,
    page_route,
    read,
)
from orderflow.api.errors import PROBLEM_BASE, PROBLEMS, HTTPProblem
from orderflow.api.http import Request, Response
from orderflow.api.routing import Param, Route
from orderflow.api.schemas import BULK_REQUEST_RULE, MAX_BODY_BYTES, QUANTITY_SCHEMA, Problem
from orderflow.version import __version__

_REF = "#/components/schemas/{name}"
_WHY = {
    400: "Bad request: a malformed query, header or body",
    401: "No bearer token, or an unknown one",
    403: "The token's role may not do this, or a page from a foreign origin tried to",
    404: "No such order (or route)",
    405: "The path exists, not with this method (Allow lists its methods)",
    408: "The body did not arrive within --http-idle-timeout",
    409: "The order's status does not allow this (or an Idempotency-Key is in flight)",
    410: "No longer kept",
    413: f"The body is over {MAX_BODY_BYTES // 1024} KiB",
    415: "The body is not JSON",
    421: "The Host header is not one this service answers for",
    422: "The body is valid JSON but breaks a rule; `errors` names the fields",
    503: "The store is unreachable or the service is stopping (Retry-After says when to try"
    " again; a type ending in outcome-unknown says a change may have been made)",
}
_HEADERS = {
    405: {"Allow": {"schema": {"type": "string"}, "description": "the methods the path takes"}},
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
}


def _name(cls: Any) -> str:
    return str(cls.__name__)


def _problem(status: int) -> dict[str, Any]:
    schema = {"schema": {"$ref": _REF.format(name="Problem")}}
    answer: dict[str, Any] = {
        "description": _WHY.get(status, "Problem"),
        "content": {"application/problem+json": schema},
    }
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


def _operation(route: Route[Any], *, auth: bool, head: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": ("head_" if head else "") + route.handler.__name__,
        "summary": route.summary,
    }
    description = route.description
    if auth and route.role is not None:
        operation["security"] = [{"bearer": []}]
        description = f"{description}\n\nRole: `{route.role}` or above.".strip()
    if description:
        operation["description"] = description
    if route.params:
        operation["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in route.params
        ]
    statuses = {405, 421, *route.statuses}
    if route.body is not None:
        media: dict[str, Any] = {"schema": {"$ref": _REF.format(name=_name(route.body))}}
        if route.example is not None:
            media["example"] = route.example
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": media},
        }
        statuses |= {400, 408, 413, 415}
    if any(p.where == "query" for p in route.params):
        statuses.add(400)
    if auth and route.role is not None:
        statuses |= {401, 403}
    ok: dict[str, Any] = {"description": route.summary}
    if not head:
        schema = {} if route.answer is None else {"$ref": _REF.format(name=_name(route.answer))}
        content: dict[str, Any] = {route.media: {"schema": schema}}
        for other in route.also_media:  # a stream: its events are strings of lines
            content[other] = {"schema": {"type": "string"}}
        ok["content"] = content
    if route.ok_headers:
        ok["headers"] = {
            name: {"schema": {"type": "string"}, "description": description}
            for name, description in route.ok_headers
        }
    responses = {str(route.ok): ok}
    for status in sorted(statuses):
        responses[str(status)] = _problem(status)
        if head:  # no body, the same headers
            responses[str(status)] = {
                "description": _WHY.get(status, "Problem"),
                **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
            }
    operation["responses"] = responses
    return operation


def openapi_document(routes: Sequence[Route[Any]], *, auth: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (`auth`: they take bearer tokens)."""
    types = {route.answer for route in routes if route.answer is not None}
    types |= {route.body for route in routes if route.body is not None}
    _, components = msgspec.json.schema_components(
        sorted([*types, Problem], key=_name), ref_template=_REF
    )
    components["ItemCreate"]["properties"]["quantity"] = QUANTITY_SCHEMA
    if "BulkRequest" in components:
        components["BulkRequest"].update(BULK_REQUEST_RULE)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        item = paths.setdefault(route.path, {})
        item[route.method.lower()] = _operation(route, auth=auth)
        if route.method == "GET":
            item["head"] = _operation(route, auth=auth, head=True)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "orderflow",
            "version": __version__,
            "description": "Take customer orders and ship them concurrently. Every error is"
            " application/problem+json (RFC 9457); its `type` is a page saying what it means.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from --auth-tokens; roles read < submit < operate",
            }
        }
    return document


def _problem_page(name: str) -> Asset:
    """The page at a problem type's address."""
    problem = PROBLEMS[name]
    title = html.escape(problem.title)
    page = (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
        f"<h1>{problem.status} {title}</h1><p>{html.escape(problem.description)}</p>"
        f"<p>Problem type <code>{PROBLEM_BASE}{name}</code> of the orderflow API;"
        " see <a href=/docs>/docs</a>.</p></html>"
    )
    return Asset.of(f"{name}.html", page.encode())


PROBLEM_PAGES: dict[str, Asset] = {name: _problem_page(name) for name in PROBLEMS}
DOCS_FILES: dict[str, Asset] = {
    f"/docs/{name}": read("orderflow.api", name) for name in ("docs.js", "docs.css")
}
DOCS_PAGE = linked_page("orderflow.api", "docs.html", DOCS_FILES)


def description_routes(routes: Sequence[Route[Any]], *, auth: bool) -> tuple[Route[object], ...]:
    """The routes that describe the API served by `routes` (and by these): ``/openapi.json``,
    ``/docs`` and its files, and ``/problems/{name}``. Their handlers need no service."""

    async def openapi(services: object, request: Request) -> Response:
        return Response(200, document)  # made below, once every route is known

    own: tuple[Route[object], ...] = (
        Route("GET", "/openapi.json", openapi, "This document", 200, role=None,
              needs_service=False),
        page_route("/docs", "docs", "The API, readable", DOCS_PAGE),
        *file_routes("docs_", "the API page's", DOCS_FILES),
        Route("GET", "/problems/{name}", problem_page, "What a problem type means", 200,
              params=(Param("name", {"type": "string", "enum": list(PROBLEMS)}, "", "path",
                            True),),
              statuses=(404,), role=None, media="text/html", needs_service=False),
    )  # fmt: skip
    document = msgspec.json.encode(openapi_document((*routes, *own), auth=auth))
    return own


async def problem_page(services: object, request: Request) -> Response:
    page = PROBLEM_PAGES.get(request.params[0])
    if page is None:
        raise HTTPProblem("not-found", f"no problem type {request.params[0]!r}")
    return page.answer(request, REVALIDATE, *PAGE_HEADERS)
