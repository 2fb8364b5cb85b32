"""The OpenAPI document's security, tags, roles, answers and examples: every operation has a
tag and a role (from its route, or derived from its path, so a new route cannot miss them);
with tokens configured, each operation that needs one says so and documents its 401 and 403
with their problem types; without, the document says auth is off and asks for no token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest

from orderflow.api.app import HttpSettings
from orderflow.api.auth import Auth
from orderflow.api.errors import PROBLEM_BASE, PROBLEMS
from orderflow.api.openapi import openapi_document
from orderflow.api.routing import ROLES, TAGS, Route, tag_of
from tests.api.conftest import ServeFactory
from tests.helpers import ROUTES

_PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs"}


def each_operation(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


@pytest.fixture
async def with_auth(serve_api: ServeFactory) -> dict[str, Any]:
    served = await serve_api(HttpSettings(auth=Auth([("read", "r" * 16)])))
    answer = await served.client.get("/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


async def test_every_operation_has_a_tag_and_a_role(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert [tag["name"] for tag in document["tags"]] == list(TAGS)
    for path, method, operation in each_operation(document):
        where = f"{method} {path}"
        [tag] = operation["tags"]
        assert tag in TAGS, where
        role = operation["x-orderflow-role"]
        assert role in (*ROLES, "none"), where
        assert "Role: " in operation["description"], where
        if role != "none":
            assert f"`{role}`" in operation["description"], where


async def test_tags_group_the_operations_as_the_contract_says(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    tag = {(m, p): op["tags"][0] for p, m, op in each_operation(document)}
    assert tag["post", "/orders"] == tag["get", "/orders/{id}"] == "orders"
    assert tag["post", "/orders/process"] == tag["post", "/orders/{id}/retry"] == "operate"
    assert tag["delete", "/orders/{id}"] == tag["post", "/orders/cancel"] == "operate"
    assert tag["get", "/events"] == "events"
    assert tag["post", "/webhooks"] == tag["get", "/webhooks/{webhook_id}"] == "webhooks"
    assert tag["get", "/healthz"] == tag["get", "/docs"] == tag["get", "/metrics"] == "meta"


def test_a_route_without_a_tag_gets_one_from_its_path_and_a_wrong_one_is_refused() -> None:
    assert tag_of("/orders/throughput", "read") == "orders"
    assert tag_of("/orders/{id}/retry", "operate") == "operate"
    assert tag_of("/instances", "read") == "meta"
    assert tag_of("/webhooks/{webhook_id}", "operate") == "webhooks"
    handler = ROUTES[0].handler
    assert Route("GET", "/orders/throughput", handler, "Throughput").tag == "orders"
    with pytest.raises(ValueError, match="tag"):
        Route("GET", "/x", handler, "X", tag="misc")
    with pytest.raises(ValueError, match="role"):
        Route("GET", "/x", handler, "X", role="admin")


async def test_with_tokens_each_operation_needing_one_has_security_401_and_403(
    with_auth: dict[str, Any],
) -> None:
    scheme = with_auth["components"]["securitySchemes"]
    assert scheme == {"bearer": {"type": "http", "scheme": "bearer", "description": scheme[
        "bearer"]["description"]}}  # fmt: skip
    assert "Authentication is on" in with_auth["info"]["description"]
    assert "security" not in with_auth  # the public operations need none
    examples = with_auth["components"]["examples"]
    for path, method, operation in each_operation(with_auth):
        where = f"{method} {path}"
        public = operation["x-orderflow-role"] == "none"
        assert ("security" in operation) is not public, where
        if public:
            assert {"401", "403"}.isdisjoint(operation["responses"]), where
            continue
        assert operation["security"] == [{"bearer": []}], where
        for status, kind in (("401", "unauthorized"), ("403", "forbidden")):
            answer = operation["responses"][status]
            assert f"{PROBLEM_BASE}{kind}" in answer["description"], where
            if method != "head":
                refs = answer["content"]["application/problem+json"]["examples"]
                assert refs == {kind: {"$ref": f"#/components/examples/{kind}"}}, where
                assert examples[kind]["value"]["type"] == PROBLEM_BASE + kind
    for path in _PUBLIC:
        assert "security" not in with_auth["paths"][path]["get"], path


async def test_without_tokens_the_document_says_so_and_asks_for_none(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "Authentication is off" in document["info"]["description"]
    assert "securitySchemes" not in document["components"]
    for path, method, operation in each_operation(document):
        assert "security" not in operation, f"{method} {path}"
        assert {"401", "403"}.isdisjoint(operation["responses"]), f"{method} {path}"


def test_every_problem_type_has_an_example_and_the_422_lists_every_field() -> None:
    examples = openapi_document(ROUTES)["components"]["examples"]
    assert examples.keys() == PROBLEMS.keys()
    invalid = examples["invalid-request"]["value"]
    assert [e["field"] for e in invalid["errors"]] == ["customer", "items[0].name",
                                                      "items[0].quantity"]  # fmt: skip


def test_success_answers_say_what_comes_back_with_examples() -> None:
    document = openapi_document(ROUTES, auth=True)
    for path, method, operation in each_operation(document):
        where = f"{method} {path}"
        [ok] = [a for s, a in operation["responses"].items() if s < "300"]
        assert ok["description"] not in ("", "OK", operation["summary"]), where
        if method == "head":
            continue
        json = ok["content"].get("application/json")
        if json is not None and json["schema"]:
            assert "example" in json, where
        if "requestBody" in operation:
            assert "example" in operation["requestBody"]["content"]["application/json"], where


def test_every_example_is_valid_against_its_own_schema() -> None:
    """A generator or a property-based tester trusts the examples: each request and answer
    example must be a value its schema accepts (a bulk answer's example once lacked a field
    its schema requires)."""
    document = openapi_document(ROUTES, auth=True)
    components = document["components"]

    def check(schema: dict[str, Any], example: Any, where: str) -> None:
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": components})
        errors = [error.message for error in validator.iter_errors(example)]
        assert not errors, f"{where}: {errors}"

    for path, method, operation in each_operation(document):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None and "example" in body:
            check(body["schema"], body["example"], f"{method} {path} request")
        for status, answer in operation["responses"].items():
            media = answer.get("content", {})
            for kind in ("application/json", "application/problem+json"):
                if kind in media and "example" in media[kind]:
                    check(
                        media[kind]["schema"], media[kind]["example"], f"{method} {path} {status}"
                    )
