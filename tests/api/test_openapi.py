"""The OpenAPI document: generated from ROUTES (every route, its method, HEAD for GETs, the
statuses every route may answer), with the domain's rules (names, quantities, ids); and
schemathesis run against the served app over both adapters, all checks and stateful
sequences (links inferred from Location headers and the schema), to find where the document and
the service disagree."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
import schemathesis
import schemathesis.hooks
import schemathesis.python.asgi
from schemathesis.engine import events

from orderflow.api.app import LOOPBACK_HOSTS, HttpSettings
from orderflow.api.auth import Auth
from orderflow.api.openapi import openapi_document
from orderflow.api.routes import IDEMPOTENCY_KEY_PATTERN
from orderflow.api.routing import Route
from orderflow.domain import (
    MAX_NAME_LENGTH,
    MAX_QUANTITY,
    NAME_PATTERN,
    ORDER_ID_PATTERN,
    new_order_id,
)
from orderflow.runtime import Runtime
from orderflow.server import build_app
from orderflow.settings import Settings
from orderflow.webhooks.model import URL_PATTERN, url_host
from tests.api.conftest import ADAPTERS, ServeFactory, serve_over_rsgi
from tests.conftest import BASE_TIME
from tests.helpers import ROUTES
from tests.receivers import Names


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    """The document as served (auth off)."""
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


def operations(document: dict[str, Any]) -> Iterator[tuple[Route, str, dict[str, Any]]]:
    """(route, method, operation) for every route and, for a GET, its HEAD too."""
    for route in ROUTES:
        item = document["paths"][route.path]
        yield route, route.method, item[route.method.lower()]
        if route.method == "GET":
            yield route, "HEAD", item["head"]


def schemas(document: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"]
    return found


# -- generated from the route table --------------------------------------------------------------


async def test_the_served_document_is_the_one_generated_from_the_routes(
    document: dict[str, Any],
) -> None:
    assert document == msgspec.json.decode(msgspec.json.encode(openapi_document(ROUTES)))
    assert document["openapi"] == "3.1.0"


async def test_every_route_is_there_with_its_method_and_head_for_a_get(
    document: dict[str, Any],
) -> None:
    expected = {(r.path, r.method.lower()) for r in ROUTES}
    expected |= {(r.path, "head") for r in ROUTES if r.method == "GET"}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == expected
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))


async def test_every_operation_documents_its_answer_and_the_statuses_every_route_may_give(
    document: dict[str, Any],
) -> None:
    for route, method, operation in operations(document):
        where = f"{method} {route.path}"
        responses = operation["responses"]
        assert str(route.ok) in responses, where
        assert {"405", "421"} <= responses.keys(), where
        assert {str(status) for status in route.statuses} <= responses.keys(), where
        if route.needs_service:  # answered 503 while the service is not running
            assert "503" in responses, where
        if route.body is not None:  # a body is read
            assert {"400", "408", "413", "415"} <= responses.keys(), where
        else:
            assert {"408", "413", "415"}.isdisjoint(responses), where
        if any(p.where == "query" for p in route.params):
            assert "400" in responses, where
        assert {"401", "403"}.isdisjoint(responses), where  # auth is off
        for status, answer in responses.items():
            if method == "HEAD":
                assert "content" not in answer, where
            elif status != str(route.ok):
                assert answer["content"].keys() == {"application/problem+json"}, where
        if method != "HEAD":
            assert responses["405"]["headers"].keys() == {"Allow"}, where
            if "503" in responses:
                assert "Retry-After" in responses["503"]["headers"], where


async def test_a_head_documents_the_same_statuses_and_headers_as_its_get(
    document: dict[str, Any],
) -> None:
    """A HEAD answer carries the headers of the GET answer (RFC 9110), only not the body:
    Allow on a 405, Retry-After on a 503, WWW-Authenticate on a 401."""
    for route in ROUTES:
        if route.method != "GET":
            continue
        item = document["paths"][route.path]
        get, head = item["get"]["responses"], item["head"]["responses"]
        assert head.keys() == get.keys(), route.path
        for status, answer in get.items():
            assert head[status].get("headers") == answer.get("headers"), (route.path, status)


async def test_readyz_documents_its_503(document: dict[str, Any]) -> None:
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]


async def test_every_media_type_a_route_answers_is_documented(document: dict[str, Any]) -> None:
    """GET /events answers text/event-stream unless asked for JSON; the document must say so."""
    for route in ROUTES:
        content = document["paths"][route.path][route.method.lower()]["responses"][str(route.ok)]
        assert {route.media, *route.also_media} <= content["content"].keys(), route.path


async def test_with_auth_every_operation_that_needs_a_role_documents_401_and_403(
    serve_api: ServeFactory,
) -> None:
    served = await serve_api(HttpSettings(auth=Auth([("read", "r" * 16)])))
    document = (await served.client.get("/openapi.json")).json()
    for route, method, operation in operations(document):
        has = {"401", "403"} <= operation["responses"].keys()
        assert has == (route.role is not None), f"{method} {route.path}"
        if has and method != "HEAD":
            headers = operation["responses"]["401"]["headers"]
            assert "WWW-Authenticate" in headers, f"{method} {route.path}"


async def test_bodies_are_json_and_required_as_the_route_says(document: dict[str, Any]) -> None:
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        if route.body is None:
            assert "requestBody" not in operation
            continue
        body = operation["requestBody"]
        assert body["required"] is route.body_required, route.path
        schema = body["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{route.body.__name__}"}


# -- the domain's rules, as the document states them ---------------------------------------------


async def test_names_are_1_to_200_characters_matching_the_name_pattern(
    document: dict[str, Any],
) -> None:
    found = schemas(document)
    for name in (found["OrderCreate"]["properties"]["customer"],
                 found["ItemCreate"]["properties"]["name"]):  # fmt: skip
        assert name["type"] == "string"
        assert (name["minLength"], name["maxLength"]) == (1, MAX_NAME_LENGTH) == (1, 200)
        assert name["pattern"] == NAME_PATTERN
    assert found["OrderCreate"]["required"] == ["customer", "items"]
    assert found["OrderCreate"]["additionalProperties"] is False
    assert found["ItemCreate"]["additionalProperties"] is False
    items = found["OrderCreate"]["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (1, 100)


async def test_the_name_pattern_says_what_the_service_checks() -> None:
    shows = re.compile(NAME_PATTERN)
    for good in ("Ada", " Ada ", "☕", "a\u200bb"):
        assert shows.fullmatch(good), good
    for bad in ("", "   ", "\u200b", "a\u0000b", "a\nb", "a\u007fb", "a\u0085b"):
        assert shows.fullmatch(bad) is None, bad


async def test_quantity_is_an_integer_from_1_to_a_million(document: dict[str, Any]) -> None:
    quantity = schemas(document)["ItemCreate"]["properties"]["quantity"]
    assert quantity["type"] == "integer"
    assert (quantity["minimum"], quantity["maximum"]) == (1, MAX_QUANTITY) == (1, 1_000_000)


async def test_ids_and_cursors_have_the_order_id_pattern(document: dict[str, Any]) -> None:
    assert re.fullmatch(ORDER_ID_PATTERN, new_order_id(BASE_TIME, 2**64 - 1))
    for route, method, operation in operations(document):
        for param in operation.get("parameters", []):
            if param["name"] in ("id", "cursor"):
                pattern = param["schema"]["pattern"]
                assert pattern in (ORDER_ID_PATTERN, NEWEST_CURSOR_PATTERN), (method, route.path)
                assert param["required"] is (param["in"] == "path")
    listing = document["paths"]["/orders"]["get"]["parameters"]
    [cursor] = [p for p in listing if p["name"] == "cursor"]
    # A listing newest first marks its cursors, so that one is never taken for the other sort.
    pattern = re.compile(cursor["schema"]["pattern"])
    newest_id = new_order_id(BASE_TIME, 7)
    assert pattern.fullmatch(newest_id)
    assert pattern.fullmatch("-" + newest_id)


NEWEST_CURSOR_PATTERN = "^-?" + ORDER_ID_PATTERN[1:]


async def test_the_idempotency_key_header_has_its_pattern(document: dict[str, Any]) -> None:
    (key,) = document["paths"]["/orders"]["post"]["parameters"]
    assert (key["name"], key["in"], key["required"]) == ("Idempotency-Key", "header", False)
    assert key["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN


async def test_bulk_times_are_declared_as_date_times(document: dict[str, Any]) -> None:
    """The service refuses a bulk `from`/`to` that is not an RFC 3339 time (422), so the
    document must not offer any string."""
    bulk = schemas(document)["BulkRequest"]["properties"]
    for name in ("from", "to"):
        strings = [s for s in bulk[name]["anyOf"] if s.get("type") == "string"]
        assert strings == [{"type": "string", "format": "date-time"}], (name, bulk[name])


def _patterns(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "pattern" and isinstance(item, str):
                yield item
            else:
                yield from _patterns(item)
    elif isinstance(value, list):
        for item in value:
            yield from _patterns(item)


async def test_every_pattern_is_a_regex_json_schema_tools_can_compile(
    document: dict[str, Any],
) -> None:
    """JSON Schema patterns are ECMA-262 regexes; a validator or generator that cannot compile
    one drops the rule (schemathesis then sends control characters as valid names)."""
    refused = []
    for pattern in sorted(set(_patterns(document))):
        try:
            jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
        except jsonschema_rs.ValidationError:
            refused.append(pattern)
    assert refused == []


# -- schemathesis --------------------------------------------------------------------------------

SCHEMATHESIS_SEED = 20261125
MAX_EXAMPLES = 15


_USUAL_HEADERS = {
    "user-agent", "accept-encoding", "accept", "connection", "content-length",
    "x-schemathesis-testcaseid",
}  # fmt: skip


@dataclass
class Finding:
    where: str
    check: str
    title: str
    request: str
    status: int | None
    answer: str

    def __str__(self) -> str:
        return (
            f"{self.where} [{self.check}] {self.title}\n    {self.request}\n"
            f"    -> {self.status} {self.answer}"
        )


def run_schemathesis(schema: Any) -> tuple[list[Finding], dict[str, int], int]:
    """Run every phase and check of schemathesis on `schema` (blocking); returns the distinct
    failures, how many scenarios each phase ran, and the stateful phase's transitions."""
    findings: dict[tuple[Any, ...], Finding] = {}
    phases: dict[str, int] = {}
    transitions = 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted) and event.payload is not None:
            transitions = event.payload.transitions_selected
        elif isinstance(event, events.ScenarioFinished):
            phases[event.phase.value] = phases.get(event.phase.value, 0) + 1
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    interaction = recorder.interactions.get(case_id)
                    request, status, answer = "", None, ""
                    if interaction is not None:
                        sent = interaction.request
                        body = (sent.body or b"")[:200].decode(errors="replace")
                        extra = {
                            name: values for name, values in sent.headers.items()
                            if name.lower() not in _USUAL_HEADERS
                        }  # fmt: skip
                        request = f"{sent.method} {sent.uri} {extra or ''} {body}".strip()
                        if interaction.response is not None:
                            status = interaction.response.status_code
                            answer = interaction.response.content[:300].decode(errors="replace")
                    failure = check.failure_info.failure
                    finding = Finding(
                        recorder.label, check.name, failure.title, request, status, answer
                    )
                    findings.setdefault((finding.where, check.name, status, answer[:60]), finding)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            raise AssertionError(f"schemathesis could not run: {event!r}")
    return list(findings.values()), phases, transitions


def schemathesis_config(**extra: Any) -> Any:
    return schemathesis.Config.from_dict({
        "seed": SCHEMATHESIS_SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "checks": {"enabled": True},
        # What a JSON client sends: GET /events then answers a page, not an endless stream of
        # server-sent events, which a request/response tool cannot read to its end.
        "headers": {"Accept": "application/json"},
        "request-timeout": 10,
        "workers": 1,
        **extra,
    })  # fmt: skip


_fresh = itertools.count()


def fresh_idempotency_key(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Make each generated Idempotency-Key unique. A key sent again with another body is 422
    idempotency-mismatch by design (as the IETF idempotency-key draft says), which no check
    can tell from a valid body refused: schemathesis reuses short keys ("0") across cases.
    Replays are tested in test_orders_api.py."""
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            headers[name] = f"{headers[name][:240]}-{next(_fresh)}"


def cursor_of_its_sort(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Make a generated cursor one of the listing's sort: a cursor made for one sort and sent
    with the other is 422 by design (the contract of GET /orders), which no schema can say of
    two parameters. Cursors across sorts are tested in test_orders_api.py."""
    query = case.query
    if case.path != "/orders" or not isinstance(query, dict):
        return
    cursor = query.get("cursor")
    if isinstance(cursor, str):
        plain = cursor.removeprefix("-")
        query["cursor"] = "-" + plain if query.get("sort") == "newest" else plain


def no_webhook_address(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Only loopback is ever dialled from a test: a generated webhook URL whose host is an IP
    address gets a made-up name instead, which the runtime's `Names` never resolves. A public
    address would be accepted and sent events; an internal one is refused (422) though it
    matches the document's pattern, as no pattern lists the internal ranges."""
    body = case.body
    if case.path != "/webhooks" or not isinstance(body, dict):
        return
    url = body.get("url")
    if isinstance(url, str) and re.fullmatch(URL_PATTERN, url):
        host = url_host(url)
        if re.fullmatch(r"[0-9.]+", host):
            body["url"] = url.replace(host, "address.test", 1)


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_schemathesis_finds_no_disagreement_between_document_and_service(
    adapter: str,
) -> None:
    """Every phase (examples, coverage, fuzzing, stateful), every check, against the served
    app on the in-memory store with the simulated shipper (no delay)."""
    runtime = Runtime(
        Settings(ship_delay=0, shutdown_grace=0, process_timeout=5), webhook_resolver=Names()
    )
    schemathesis.hook("before_call")(fresh_idempotency_key)
    schemathesis.hook("before_call")(no_webhook_address)
    schemathesis.hook("before_call")(cursor_of_its_sort)
    try:
        if adapter == "rsgi":
            app = build_app(runtime)
            async with serve_over_rsgi(app) as served:
                url = f"{served.origin}/openapi.json"
                # Off the loop: the server answers on this loop while schemathesis blocks.
                schema = await asyncio.to_thread(
                    schemathesis.openapi.from_url, url, config=schemathesis_config()
                )
                findings, phases, transitions = await asyncio.to_thread(run_schemathesis, schema)
        else:  # schemathesis serves the app itself: its own loop, Host "testserver"
            hosts = LOOPBACK_HOSTS | {schemathesis.python.asgi.HOST}
            app = build_app(runtime, HttpSettings(allowed_hosts=hosts), manage_runtime=True)
            try:
                schema = schemathesis.openapi.from_asgi(
                    "/openapi.json", app, config=schemathesis_config()
                )
                findings, phases, transitions = await asyncio.to_thread(run_schemathesis, schema)
            finally:
                await asyncio.to_thread(schemathesis.python.asgi.shutdown_lifespans)
            assert not runtime.started
    finally:
        schemathesis.hooks.GLOBAL_HOOK_DISPATCHER.unregister(fresh_idempotency_key)
        schemathesis.hooks.GLOBAL_HOOK_DISPATCHER.unregister(no_webhook_address)
        schemathesis.hooks.GLOBAL_HOOK_DISPATCHER.unregister(cursor_of_its_sort)
    assert {"examples", "coverage", "fuzzing", "stateful"} <= phases.keys(), phases
    assert transitions > 0  # the stateful phase ran sequences (inferred links)
    report = "\n".join(str(finding) for finding in findings)
    assert not findings, f"{len(findings)} disagreements:\n{report}"
