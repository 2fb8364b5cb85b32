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
from orderflow.api.routing import TAGS, Param, Route
from orderflow.api.schemas import BULK_REQUEST_RULE, MAX_BODY_BYTES, Problem, fix_schemas
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


_KINDS: dict[int, list[str]] = {}
for _kind, _type in PROBLEMS.items():
    _KINDS.setdefault(_type.status, []).append(_kind)


_INVALID_EXAMPLE = {  # what a 422 of a submit with three problems says
    "type": PROBLEM_BASE + "invalid-request",
    "title": PROBLEMS["invalid-request"].title,
    "status": 422,
    "detail": "customer: must not be blank; items[0].name: must not be blank;"
    " items[0].quantity: 0 is less than the minimum of 1",
    "errors": [
        {"field": "customer", "message": "must not be blank"},
        {"field": "items[0].name", "message": "must not be blank"},
        {"field": "items[0].quantity", "message": "0 is less than the minimum of 1"},
    ],
}


def _problem_examples() -> dict[str, Any]:
    """An example of each problem type (components.examples), by its name."""
    examples: dict[str, Any] = {}
    for kind, problem in PROBLEMS.items():
        value = (
            _INVALID_EXAMPLE
            if kind == "invalid-request"
            else {
                "type": PROBLEM_BASE + kind,
                "title": problem.title,
                "status": problem.status,
                "detail": problem.description,
            }
        )
        examples[kind] = {"summary": problem.title, "value": value}
    return examples


def _problem(status: int) -> dict[str, Any]:
    """A problem answer: its schema, and an example of each problem type it may be (their
    `type` URIs are what a client tells them apart by)."""
    kinds = _KINDS.get(status, [])
    types = ", ".join(f"`{PROBLEM_BASE}{kind}`" for kind in kinds)
    media: dict[str, Any] = {"schema": {"$ref": _REF.format(name="Problem")}}
    if kinds:
        media["examples"] = {kind: {"$ref": f"#/components/examples/{kind}"} for kind in kinds}
    answer: dict[str, Any] = {
        "description": _WHY.get(status, "Problem") + (f" (type {types})" if types else ""),
        "content": {"application/problem+json": media},
    }
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


def _role(route: Route[Any], *, auth: bool) -> str:
    """The operation's role, as its description says it."""
    if route.role is None:
        return "Role: none; anyone may call it, also when the service takes tokens."
    if auth:
        return f"Role: `{route.role}` or above (a bearer token of that role)."
    return (
        f"Role: `{route.role}` or above, when the service takes tokens (--auth-tokens);"
        " this one does not, so any caller may."
    )


def _returns(route: Route[Any]) -> str:
    """What the success answer holds: the route's word, else its type's docstring."""
    if route.returns:
        return route.returns
    doc = (getattr(route.answer, "__doc__", None) or "").strip()
    if doc and route.answer is not None and not doc.startswith(_name(route.answer) + "("):
        return doc.split("\n\n")[0].replace("\n", " ")
    return route.summary


def _operation(
    route: Route[Any], components: dict[str, Any], *, auth: bool, head: bool = False
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": ("head_" if head else "") + route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "x-orderflow-role": route.role or "none",
    }
    needs_token = auth and route.role is not None
    if needs_token:
        operation["security"] = [{"bearer": []}]
    operation["description"] = "\n\n".join(
        part for part in (route.description, _role(route, auth=auth)) if part
    )
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
        example = route.example
        if example is None:
            example = example_of(media["schema"], components)
        media["example"] = example
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": media},
        }
        statuses |= {400, 408, 413, 415}
    if any(p.where == "query" for p in route.params):
        statuses.add(400)
    if needs_token:
        statuses |= {401, 403}
    ok: dict[str, Any] = {"description": _returns(route)}
    if not head:
        schema = {} if route.answer is None else {"$ref": _REF.format(name=_name(route.answer))}
        answer: dict[str, Any] = {"schema": schema}
        if route.answer is not None and route.media == "application/json":
            example = route.answer_example
            answer["example"] = example_of(schema, components) if example is None else example
        content: dict[str, Any] = {route.media: answer}
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
                "description": responses[str(status)]["description"],
                **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
            }
    operation["responses"] = responses
    return operation


def example_of(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """An example of a value of `schema` (its own example, else made up from its type), for an
    operation whose route gives none."""
    if "$ref" in schema:
        return example_of(components[schema["$ref"].rpartition("/")[2]], components, depth)
    for key in ("example", "default"):
        if key in schema and schema[key] is not None:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    choices = [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]
    if choices:
        return example_of(choices[0], components, depth)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return {}
        properties = schema.get("properties", {})
        return {k: example_of(v, components, depth + 1) for k, v in properties.items()}
    if kind == "array":
        return [example_of(schema.get("items", {}), components, depth + 1)] if depth < 5 else []
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if kind == "string":
        return {"date-time": "2026-01-01T12:00:00Z"}.get(schema.get("format", ""), "text")
    return None


_AUTH_ON = (
    " Authentication is on: every operation but the public ones (health, readiness, these"
    " pages) needs `Authorization: Bearer <token>`, of a role that may call it (read < submit"
    " < operate; each operation's description and `x-orderflow-role` say which). Without a"
    " token: 401 `/problems/unauthorized`; with one of too low a role: 403 `/problems/forbidden`."
)
_AUTH_OFF = (
    " Authentication is off: this service was started without --auth-tokens, so no operation"
    " needs a token. Each operation's role (`x-orderflow-role`) says what it would need with"
    " tokens (read < submit < operate)."
)


def openapi_document(routes: Sequence[Route[Any]], *, auth: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (`auth`: they take bearer tokens)."""
    types = {route.answer for route in routes if route.answer is not None}
    types |= {route.body for route in routes if route.body is not None}
    _, components = msgspec.json.schema_components(
        sorted([*types, Problem], key=_name), ref_template=_REF
    )
    fix_schemas(components)
    if "BulkRequest" in components:
        components["BulkRequest"].update(BULK_REQUEST_RULE)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        item = paths.setdefault(route.path, {})
        item[route.method.lower()] = _operation(route, components, auth=auth)
        if route.method == "GET":
            item["head"] = _operation(route, components, auth=auth, head=True)
    used = {route.tag for route in routes}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "orderflow",
            "version": __version__,
            "description": "Take customer orders and ship them concurrently. Every error is"
            " application/problem+json (RFC 9457); its `type` is a page saying what it means."
            + (_AUTH_ON if auth else _AUTH_OFF),
        },
        "tags": [{"name": tag, "description": text} for tag, text in TAGS.items() if tag in used],
        "paths": paths,
        "components": {"schemas": components, "examples": _problem_examples()},
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
              needs_service=False, returns="The OpenAPI 3.1 document of this service"),
        page_route("/docs", "docs", "The API, readable", DOCS_PAGE),
        *file_routes("docs_", "the API page's", DOCS_FILES),
        Route("GET", "/problems/{name}", problem_page, "What a problem type means", 200,
              params=(Param("name", {"type": "string", "enum": list(PROBLEMS)}, "", "path",
                            True),),
              statuses=(404,), role=None, media="text/html", needs_service=False,
              returns="A page saying what the problem type means and what to do"),
    )  # fmt: skip
    document = msgspec.json.encode(openapi_document((*routes, *own), auth=auth))
    return own


async def problem_page(services: object, request: Request) -> Response:
    page = PROBLEM_PAGES.get(request.params[0])
    if page is None:
        raise HTTPProblem("not-found", f"no problem type {request.params[0]!r}")
    return page.answer(request, REVALIDATE, *PAGE_HEADERS)
