"""The dashboard, driven in headless Chromium against a real `orderflow serve`: orders submitted
through the API appear live, the page's buttons process, cancel and retry them, the filters
narrow the table and it pages by the cursor, and with auth on the page asks for a token and
shows actions only to a token that may take them. Every wait is on the page's DOM.

``ORDERFLOW_UPDATE_SCREENSHOT=1`` also writes the first test's screenshot to docs/dashboard.png,
the one the README shows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ServerFactory, confirm, open_dashboard, row
from tests.browser.shipper import REFUSED
from tests.helpers import ROOT, post_order

pytestmark = pytest.mark.e2e

PAGE_SIZE = 100  # rows on a page of the table (orders.js)


def test_orders_appear_live_ship_and_cancel_from_the_page(
    page: Page, serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve()
    open_dashboard(page, server)
    expect(page.get_by_test_id("orders-empty")).to_be_visible()

    with server.client() as client:
        ids = [post_order(client, f"Customer {n}") for n in range(4)]
        ids.append(post_order(client, "Zoë <b>Bold</b> & Co"))
        expect(page.get_by_test_id("order-row")).to_have_count(5)
        for order_id in ids:
            expect(row(page, order_id)).to_have_attribute("data-status", "pending")
        expect(page.get_by_test_id("count-pending")).to_have_text("5")
        # Names are text, not markup.
        expect(row(page, ids[-1]).locator("td.customer")).to_have_text("Zoë <b>Bold</b> & Co")
        assert page.locator('[data-testid="orders"] b').count() == 0
        # The newest first.
        expect(page.get_by_test_id("order-row").first).to_have_attribute("data-order-id", ids[-1])

        page.get_by_test_id("process").click()
        expect(page.get_by_test_id("action-result")).to_have_text(
            "5 pending orders sent to shipping."
        )
        for order_id in ids:
            expect(row(page, order_id)).to_have_attribute("data-status", "shipped")
        expect(page.get_by_test_id("count-shipped")).to_have_text("5")
        expect(page.get_by_test_id("count-pending")).to_have_text("0")
        expect(page.get_by_test_id("chart-shipped")).to_have_text("5")

        late = post_order(client, "Late Customer")
        row(page, late).click()
        expect(page.get_by_test_id("detail-id")).to_have_text(late)
        expect(page.get_by_test_id("detail-retry")).to_be_disabled()
        page.get_by_test_id("detail-cancel").click()
        expect(page.get_by_test_id("detail-status")).to_have_attribute("data-status", "cancelled")
        expect(page.get_by_test_id("detail-cancel")).to_be_disabled()
        expect(row(page, late)).to_have_attribute("data-status", "cancelled")
        history = page.get_by_test_id("history-entry")
        expect(history).to_have_count(2)
        expect(history.last).to_contain_text("cancelled from the dashboard")
        assert client.get(f"/orders/{late}").json()["status"] == "cancelled"

    counts = {"pending": "0", "processing": "0", "shipped": "5", "cancelled": "1", "failed": "0"}
    for status, count in counts.items():
        expect(page.get_by_test_id(f"count-{status}")).to_have_text(count)
    expect(page.get_by_test_id("no-failures")).to_be_visible()

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=screenshot)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("ORDERFLOW_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(screenshot, ROOT / "docs" / "dashboard.png")


def test_failed_orders_show_why_and_are_retried_one_and_in_bulk(
    page: Page, serve: ServerFactory
) -> None:
    server = serve("--shipper", "python:tests.browser.shipper:ship")
    open_dashboard(page, server)
    with server.client() as client:
        ann = post_order(client, "Ann")
        bob = post_order(client, "Refuse Bob")
        cy = post_order(client, "Refuse Cy")
    expect(page.get_by_test_id("order-row")).to_have_count(3)

    page.get_by_test_id("process").click()
    expect(row(page, ann)).to_have_attribute("data-status", "shipped")
    expect(row(page, bob)).to_have_attribute("data-status", "failed")
    expect(row(page, cy)).to_have_attribute("data-status", "failed")
    expect(page.get_by_test_id("count-failed")).to_have_text("2")
    reasons = page.get_by_test_id("failed-reasons")
    expect(reasons).to_contain_text(f"{REFUSED} \u00d7 2")

    row(page, ann).click()
    expect(page.get_by_test_id("detail-shipment")).to_contain_text(f'"tracking": "TP-{ann[-8:]}"')

    row(page, bob).click()
    expect(page.get_by_test_id("detail-id")).to_have_text(bob)
    expect(page.get_by_test_id("detail-cancel")).to_be_disabled()
    page.get_by_test_id("detail-retry").click()
    expect(page.get_by_test_id("detail-status")).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("detail-message")).to_have_text("Now pending.")
    expect(page.get_by_test_id("detail-note")).to_contain_text("until POST /orders/process")
    expect(row(page, bob)).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("count-failed")).to_have_text("1")

    page.get_by_test_id("failed-reason").click()  # fills the reason in
    expect(page.get_by_test_id("reason-contains")).to_have_value(REFUSED)
    page.get_by_test_id("bulk-retry").click()  # a dry run counts them, then it asks
    confirm(page, f"Retry 1 failed order whose reason contains “{REFUSED}”?")
    expect(page.get_by_test_id("action-result")).to_contain_text("1 order sent back to pending.")
    expect(row(page, cy)).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("count-pending")).to_have_text("2")
    expect(page.get_by_test_id("no-failures")).to_be_visible()

    # Filters: by status, then by time.
    page.get_by_test_id("filter-status").select_option("pending")
    expect(page.get_by_test_id("order-row")).to_have_count(2)
    expect(row(page, ann)).to_have_count(0)
    page.get_by_test_id("filter-status").select_option("shipped")
    expect(page.get_by_test_id("order-row")).to_have_count(1)
    expect(row(page, ann)).to_be_visible()
    page.get_by_test_id("filter-clear").click()
    expect(page.get_by_test_id("order-row")).to_have_count(3)
    page.get_by_test_id("filter-to").fill("2020-01-01T00:00")
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("order-row")).to_have_count(0)
    expect(page.get_by_test_id("orders-empty")).to_be_visible()
    page.get_by_test_id("filter-to").fill("")
    page.get_by_test_id("filter-from").fill("2020-01-01T00:00")
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("order-row")).to_have_count(3)


def test_the_table_pages_newest_first_with_the_cursor_and_new_orders_come_on_top(
    page: Page, serve: ServerFactory
) -> None:
    """A page of 100, the newest first (the API sorts: `sort=newest`), the next pages by the
    cursor; a new order shows at the top of the first page."""
    server = serve()
    with server.client() as client:
        ids = [post_order(client, f"Customer {n}") for n in range(PAGE_SIZE + 30)]
        open_dashboard(page, server)
        rows = page.get_by_test_id("order-row")
        expect(rows).to_have_count(PAGE_SIZE)
        expect(rows.first).to_have_attribute("data-order-id", ids[-1])
        assert shown(page) == ids[::-1][:PAGE_SIZE]
        page.get_by_test_id("page-next").click()
        expect(page.get_by_test_id("page-number")).to_have_text("Page 2")
        expect(rows).to_have_count(30)
        assert shown(page) == ids[::-1][PAGE_SIZE:]
        expect(page.get_by_test_id("page-next")).to_be_disabled()
        page.get_by_test_id("page-prev").click()
        expect(rows.first).to_have_attribute("data-order-id", ids[-1])

        newer = post_order(client, "One More")
        expect(rows.first).to_have_attribute("data-order-id", newer)
        expect(rows).to_have_count(PAGE_SIZE)


def shown(page: Page) -> list[str | None]:
    """The ids of the rows shown, top to bottom."""
    rows = page.get_by_test_id("order-row")
    return [rows.nth(n).get_attribute("data-order-id") for n in range(rows.count())]


TOKENS = {
    "read": "read-token-0123456789",
    "submit": "submit-token-0123456789",
    "operate": "operate-token-0123456789",
}


def test_with_auth_on_the_page_asks_for_a_token_and_uses_it(
    page: Page, serve: ServerFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{role} {token}\n" for role, token in TOKENS.items()))
    server = serve("--auth-tokens", str(tokens))
    submitter = {"authorization": f"Bearer {TOKENS['submit']}"}
    with server.client() as client:
        first = post_order(client, "Before The Page", headers=submitter)

        page.goto(server.url + "/dashboard")
        dialog = page.get_by_test_id("token-dialog")
        expect(dialog).to_be_visible()
        # No error yet: no error strip (it used to show empty and red).
        expect(page.get_by_test_id("token-error")).to_be_hidden()
        page.get_by_test_id("token-input").fill("not-a-token-0123456789")
        page.get_by_test_id("token-submit").click()
        expect(page.get_by_test_id("token-error")).to_contain_text("refused")
        page.get_by_test_id("token-input").fill(TOKENS["read"])
        page.get_by_test_id("token-submit").click()
        expect(dialog).to_be_hidden()
        expect(page.get_by_test_id("count-pending")).to_have_text("1")
        expect(row(page, first)).to_have_attribute("data-status", "pending")
        expect(page.get_by_test_id("live")).to_have_attribute("data-state", "live")

        # The stream carries the token.
        live = post_order(client, "After The Token", headers=submitter)
        expect(row(page, live)).to_have_attribute("data-status", "pending")

        # A read token sees no action: no buttons, no row checkboxes, no webhooks.
        expect(page.get_by_test_id("read-only")).to_be_visible()
        for action in ("process", "bulk-retry", "bulk-cancel-matching", "bulk-cancel-selected"):
            expect(page.get_by_test_id(action)).to_be_hidden()
        expect(row(page, first).get_by_test_id("row-select")).to_be_hidden()
        row(page, first).click()
        expect(page.get_by_test_id("detail-id")).to_have_text(first)
        expect(page.get_by_test_id("detail-cancel")).to_be_hidden()
        expect(page.get_by_test_id("webhooks-locked")).to_be_visible()
        expect(page.get_by_test_id("webhooks-body")).to_be_hidden()

        page.get_by_test_id("change-token").click()
        expect(page.get_by_test_id("token-error")).to_be_hidden()  # no empty red strip
        page.get_by_test_id("token-input").fill(TOKENS["operate"])
        page.get_by_test_id("token-submit").click()
        expect(page.get_by_test_id("read-only")).to_be_hidden()
        expect(page.get_by_test_id("detail-cancel")).to_be_visible()
        expect(page.get_by_test_id("webhooks-body")).to_be_visible()
        page.get_by_test_id("process").click()
        expect(page.get_by_test_id("action-result")).to_have_text(
            "2 pending orders sent to shipping."
        )
        expect(row(page, first)).to_have_attribute("data-status", "shipped")
        expect(row(page, live)).to_have_attribute("data-status", "shipped")

    # The token is kept for the tab: a reload does not ask again.
    assert page.evaluate("sessionStorage.getItem('orderflow.token')") == TOKENS["operate"]
    page.reload()
    expect(page.get_by_test_id("count-shipped")).to_have_text("2")
    expect(page.get_by_test_id("order-row")).to_have_count(2)
    expect(page.get_by_test_id("token-dialog")).to_be_hidden()
