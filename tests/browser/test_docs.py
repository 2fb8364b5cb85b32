"""/docs in headless Chromium against a real `orderflow serve`, with its Content-Security-Policy
enforced: the page builds itself from /openapi.json with its own script file (no inline code,
no innerHTML), lists every operation grouped by tag with its role, its request and answer
shapes as field lists and their examples, and breaks no rule of the policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from orderflow.api.assets import CONTENT_SECURITY_POLICY
from orderflow.api.routing import TAGS
from tests.browser.conftest import ServerFactory
from tests.helpers import ROUTES

pytestmark = pytest.mark.e2e

# Every violation of the policy the page meets, kept where the test can read it.
_WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (event) => window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`));
"""


def test_docs_lists_every_operation_under_its_policy(page: Page, serve: ServerFactory) -> None:
    """/docs was filled by an inline script through innerHTML, and served with no policy; with
    the dashboard's policy an inline script would not even run. The page is a file, its
    script and style files of its own: it lists every operation, as text, with no violation
    (the `page` fixture also fails on any console error, a refused script among them)."""
    server = serve()
    page.add_init_script(_WATCH_VIOLATIONS)
    answer = page.goto(server.url + "/docs")
    assert answer is not None
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    operations = page.get_by_test_id("operation")
    expect(operations).to_have_count(len(ROUTES))
    expect(page.get_by_test_id("operations")).not_to_have_attribute("aria-busy", "true")
    submit = page.locator('[data-operation="post /orders"]')
    expect(submit.locator("h3")).to_contain_text("POST/orders")
    expect(submit).to_contain_text("Submit an order")
    expect(page.get_by_role("heading", name="Schemas")).to_be_visible()
    style = page.evaluate("getComputedStyle(document.body).maxWidth")
    assert style == "1024px"  # its style file applied (64rem)
    assert page.evaluate("window.__violations") == []


def test_docs_groups_by_tag_and_shows_roles_shapes_and_examples(
    page: Page, serve: ServerFactory
) -> None:
    server = serve()
    page.goto(server.url + "/docs")
    expect(page.get_by_test_id("operations")).not_to_have_attribute("aria-busy", "true")
    tags = page.get_by_test_id("tag")
    assert tags.evaluate_all("nodes => nodes.map(n => n.dataset.tag)") == list(TAGS)
    for route in ROUTES:  # each operation under its route's tag
        group = page.locator(f'[data-tag="{route.tag}"]')
        found = group.locator(f'[data-operation="{route.method.lower()} {route.path}"]')
        expect(found).to_have_count(1)
    expect(page.get_by_test_id("about")).to_contain_text("Authentication is off")

    submit = page.locator('[data-tag="orders"] [data-operation="post /orders"]')
    expect(submit.get_by_test_id("role")).to_have_text("role: submit")
    body = submit.get_by_test_id("request")
    expect(body.locator("h4")).to_contain_text("OrderCreate")
    customer = body.locator('li[data-field="customer"]')
    expect(customer).to_contain_text("string")
    expect(customer).to_contain_text("required")
    expect(customer).to_contain_text("1 to 200 characters")
    expect(body.locator('li[data-field="items"] li[data-field="quantity"]')).to_contain_text(
        "integer"
    )
    expect(body.get_by_test_id("example")).to_contain_text('"customer": "John Doe"')
    answer = submit.get_by_test_id("answer")
    expect(answer).to_contain_text("The new order's id and status")
    expect(answer.locator('li[data-field="status"]')).to_contain_text("one of")
    expect(answer.get_by_test_id("example")).to_contain_text('"status": "pending"')
    expect(submit).to_contain_text("/problems/invalid-request")

    healthz = page.locator('[data-tag="meta"] [data-operation="get /healthz"]')
    expect(healthz.get_by_test_id("role")).to_have_text("public")
    retry = page.locator('[data-tag="operate"] [data-operation="post /orders/{id}/retry"]')
    expect(retry.get_by_test_id("role")).to_have_text("role: operate")
    expect(retry.get_by_test_id("request").locator("h4")).to_contain_text("(optional)")


def test_docs_with_tokens_says_auth_is_on(page: Page, serve: ServerFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("read docs-read-token-0123456789\n")
    server = serve("--auth-tokens", str(tokens))
    page.goto(server.url + "/docs")  # the page and the document are public
    expect(page.get_by_test_id("about")).to_contain_text("Authentication is on")
    expect(page.get_by_test_id("operation")).to_have_count(len(ROUTES))
