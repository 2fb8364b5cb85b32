"""/docs in headless Chromium against a real `orderflow serve`, with its Content-Security-Policy
enforced: the page builds itself from /openapi.json with its own script file (no inline code,
no innerHTML), lists every operation, and breaks no rule of the policy."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from orderflow.api.assets import CONTENT_SECURITY_POLICY
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
    expect(submit.locator("h3")).to_have_text("POST/orders")
    expect(submit).to_contain_text("Submit an order")
    expect(submit.locator("pre")).to_contain_text('"customer": "John Doe"')
    expect(page.get_by_role("heading", name="Schemas")).to_be_visible()
    style = page.evaluate("getComputedStyle(document.body).maxWidth")
    assert style == "1024px"  # its style file applied (64rem)
    assert page.evaluate("window.__violations") == []
