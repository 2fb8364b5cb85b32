"""Bearer tokens and roles, driven by the route table: every route in ROUTES (and HEAD where GET
is) with no token, a wrong one, and each role's. A route added to the table is covered here
without a change. Also the tokens file, and the OpenAPI document with auth on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from orderflow.api.app import HttpSettings
from orderflow.api.auth import ROLES, Auth
from orderflow.api.routing import Route
from tests.api.conftest import (
    ACCEPT_JSON,
    Served,
    ServeFactory,
    assert_problem,
    create,
    sample_path,
)
from tests.helpers import ORDER, ROUTES

TOKENS = {
    "read": "read-token-0123456789",
    "submit": "submit-token-0123456789",
    "operate": "operate-token-0123456789",
}
WRONG = "wrong-token-0123456789"
RANK = {role: rank for rank, role in enumerate(ROLES)}


def _cases() -> list[tuple[str, Route]]:
    cases = [(route.method, route) for route in ROUTES]
    cases += [("HEAD", route) for route in ROUTES if route.method == "GET"]
    return cases


CASES = _cases()


@pytest.fixture
async def authed(serve_api: ServeFactory) -> Served:
    """The API with a token for each role."""
    return await serve_api(HttpSettings(auth=Auth(list(TOKENS.items()))))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def call(
    client: httpx.AsyncClient, method: str, route: Route, headers: dict[str, str]
) -> httpx.Response:
    """`route` called with `method`, a real order id and a body it accepts, and `headers`."""
    order_id = (await create(client, headers=bearer(TOKENS["submit"])))["id"]
    path = sample_path(route.path, order_id)
    body: Any = None
    if route.body is not None:
        body = route.example if route.example is not None else {}
    headers = {**ACCEPT_JSON, **headers}
    return await client.request(method, path, json=body, headers=headers)


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


def assert_let_through(response: httpx.Response) -> None:
    assert response.status_code not in (401, 403), response.text
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize(("method", "route"), CASES, ids=[f"{m} {r.path}" for m, r in CASES])
async def test_every_route_checks_the_token_and_its_role(
    authed: Served, method: str, route: Route
) -> None:
    client = authed.client
    without = await call(client, method, route, {})
    wrong = await call(client, method, route, bearer(WRONG))
    if route.role is None:  # open even with auth on: probes, the documents
        assert_let_through(without)
        assert_let_through(wrong)
    else:
        assert_unauthorized(without)
        assert_unauthorized(wrong)
    for role, token in TOKENS.items():
        response = await call(client, method, route, bearer(token))
        if route.role is not None and RANK[role] < RANK[route.role]:
            assert_problem(response, 403, "forbidden")
        else:
            assert_let_through(response)
            assert response.status_code < 500, (role, response.text)


@pytest.mark.parametrize(
    "authorization",
    [
        f"Basic {TOKENS['operate']}",
        "Bearer",
        "Bearer  x",
        f"Bearer {TOKENS['operate'][:-1]}",
        f"Bearer {TOKENS['operate']}x",
        f"Token {TOKENS['operate']}",
    ],
)
async def test_anything_but_a_known_bearer_token_is_401(authed: Served, authorization: str) -> None:
    response = await authed.client.post(
        "/orders", json=ORDER, headers={"authorization": authorization}
    )
    assert_unauthorized(response)
    assert TOKENS["operate"] not in response.text


async def test_the_bearer_scheme_is_case_insensitive(authed: Served) -> None:
    response = await authed.client.get(
        "/orders", headers={"authorization": f"bearer {TOKENS['read']}"}
    )
    assert response.status_code == 200


async def test_a_token_is_checked_after_the_host_and_the_method(authed: Served) -> None:
    foreign = await authed.client.get("/orders", headers={"host": "evil.example"})
    assert_problem(foreign, 421, "misdirected-request")
    not_allowed = await authed.client.put("/orders")
    assert_problem(not_allowed, 405, "method-not-allowed")


# -- the tokens file -----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_from_file_reads_roles_and_tokens_and_skips_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# orderflow tokens\n\n"
        f"read {TOKENS['read']}   # the dashboard\n"
        f"  operate\t{TOKENS['operate']}\n"
        "   # indented comment\n",
    )
    auth = Auth.from_file(path)
    assert auth.check(f"Bearer {TOKENS['read']}", "read") == "read"
    assert auth.check(f"Bearer {TOKENS['operate']}", "submit") == "operate"
    with pytest.raises(Exception, match="needs operate") as refused:
        auth.check(f"Bearer {TOKENS['read']}", "operate")
    assert TOKENS["read"] not in str(refused.value)


@pytest.mark.parametrize(
    "line",
    [
        "admin secret-token-0123456789",  # not a role
        "read",  # no token
        "read secret-token-0123456789 secret-token-0123456789",  # one too many
        "READ secret-token-0123456789",  # roles are lower case
        "secret-token-0123456789 read",  # the wrong way round
    ],
)
def test_from_file_names_a_bad_line_and_never_the_token(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, f"# tokens\nread {TOKENS['read']}\n{line}\n")
    with pytest.raises(ValueError, match=r"line 3\b") as error:
        Auth.from_file(path)
    message = str(error.value)
    assert "secret-token" not in message
    assert TOKENS["read"] not in message
    assert str(path) in message


def test_from_file_refuses_a_token_under_16_characters(tmp_path: Path) -> None:
    short = "s" * 15
    path = write(tmp_path, f"read {short}\n")
    with pytest.raises(ValueError, match="line 1: a token must be at least 16") as error:
        Auth.from_file(path)
    assert short not in str(error.value)
    assert Auth.from_file(write(tmp_path, "read " + "s" * 16)) is not None


@pytest.mark.parametrize("text", ["", "\n# only a comment\n   \n"])
def test_from_file_refuses_a_file_without_tokens(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="holds no tokens"):
        Auth.from_file(write(tmp_path, text))


def test_from_file_says_when_it_cannot_read_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        Auth.from_file(tmp_path / "missing")


# -- the document, with auth on ------------------------------------------------------------------


async def test_the_document_declares_the_bearer_scheme_and_each_operations_role(
    authed: Served,
) -> None:
    response = await authed.client.get("/openapi.json")  # open, even with auth on
    assert response.status_code == 200
    document = response.json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, route in CASES:  # (401 and 403 answers: test_openapi.py)
        operation = document["paths"][route.path][method.lower()]
        if route.role is None:
            assert "security" not in operation, (method, route.path)
        else:
            assert operation["security"] == [{"bearer": []}], (method, route.path)
            assert f"Role: `{route.role}`" in operation["description"], (method, route.path)


async def test_without_auth_the_document_declares_no_security(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in document["components"]
    for item in document["paths"].values():
        for operation in item.values():
            assert "security" not in operation
            assert {"401", "403"}.isdisjoint(operation["responses"])
