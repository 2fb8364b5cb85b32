"""The dashboard, driven in headless Chromium against a real `orderflow serve`: orders submitted
through the API appear live, the page's buttons process, cancel and retry them, the filters
narrow the table, and with auth on the page asks for a token. Every wait is on the page's DOM.

``ORDERFLOW_UPDATE_SCREENSHOT=1`` also writes the first test's screenshot to docs/dashboard.png,
the one the README shows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ServerFactory, open_dashboard, row
from tests.browser.shipper import REFUSED
from tests.helpers import ROOT, post_order

pytestmark = pytest.mark.e2e


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
        expect(page.get_by_test_id("throughput-total")).to_contain_text("5 shipped")

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
    expect(row(page, bob)).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("count-failed")).to_have_text("1")

    page.get_by_test_id("failed-reason").click()  # fills the reason in
    expect(page.get_by_test_id("reason-contains")).to_have_value(REFUSED)
    page.get_by_test_id("bulk-retry").click()
    expect(page.get_by_test_id("action-result")).to_have_text(
        "1 failed order sent back to pending."
    )
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


def test_the_table_shows_the_newest_orders_when_there_are_more_than_it_holds(
    page: Page, serve: ServerFactory
) -> None:
    """The API lists oldest first: the page must look for the newest 200 (at most) itself."""
    server = serve()
    with server.client() as client:
        ids = [post_order(client, f"Customer {n}") for n in range(260)]
        open_dashboard(page, server)
        rows = page.get_by_test_id("order-row")
        expect(rows.first).to_have_attribute("data-order-id", ids[-1])
        assert 100 <= rows.count() <= 200
        shown = [rows.nth(n).get_attribute("data-order-id") for n in range(rows.count())]
        assert shown == ids[::-1][: len(shown)]  # the newest, newest first, none missing
        expect(page.get_by_test_id("orders-note")).to_contain_text("newest")

        newer = post_order(client, "One More")
        expect(rows.first).to_have_attribute("data-order-id", newer)
        assert rows.count() <= 200


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

        page.get_by_test_id("process").click()  # a read token may not
        expect(page.get_by_test_id("action-result")).to_contain_text("may not do this")

        page.get_by_test_id("change-token").click()
        page.get_by_test_id("token-input").fill(TOKENS["operate"])
        page.get_by_test_id("token-submit").click()
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
