"""The dashboard's views in headless Chromium against a real `orderflow serve`, on every store
where what the page shows is what the store keeps (search and paging, bulk actions, the 24-hour
chart, instances): the search box, row selection and bulk actions with their confirmations,
throughput counted by the service (a new page, even after a restart, sees it), instances, the
webhooks view, and the detail panel following an order after an action. Every wait is on the
page's DOM or on the service's answers."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import (
    ServerFactory,
    confirm,
    open_dashboard,
    row,
    search,
)
from tests.conftest import eventually_sync
from tests.helpers import post_order, submit
from tests.receivers import SECRET, Receiver, accept, replying

pytestmark = pytest.mark.e2e

PAGE_SIZE = 100  # rows on a page of the table (orders.js)
_MILLISECONDS = re.compile(r"^\d+ ms$")
SHIPPER = ("--shipper", "python:tests.browser.shipper:ship")


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Page]:
    """Another tab, in a context of its own (nothing shared with `page`): a page opened later."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


def ids_shown(page: Page) -> list[str | None]:
    rows = page.get_by_test_id("order-row")
    return [rows.nth(n).get_attribute("data-order-id") for n in range(rows.count())]


def test_the_search_box_finds_by_customer_id_and_tail_and_pages_either_way(
    page: Page, serve: ServerFactory, store_url: str
) -> None:
    server = serve(database_url=store_url)
    with server.client() as client:
        strasse = post_order(client, "Straße Ann")
        bob = post_order(client, "Bob Builder")
        tram = post_order(client, "straßenbahn Co")
        island = post_order(client, "Ærøskøbing Ltd")
    open_dashboard(page, server)
    rows = page.get_by_test_id("order-row")
    expect(rows).to_have_count(4)
    expect(rows.first).to_have_attribute("data-order-id", island)  # the newest first

    search(page, "STRASSE")  # a customer's prefix, in any case (Unicode casefold)
    expect(rows).to_have_count(2)
    assert ids_shown(page) == [tram, strasse]
    search(page, "ærø")
    expect(rows).to_have_count(1)
    expect(row(page, island)).to_be_visible()
    search(page, f"…{bob[-10:]}")  # an id's tail, as the table shows it
    expect(rows).to_have_count(1)
    expect(row(page, bob)).to_be_visible()
    search(page, strasse)  # a whole id
    expect(rows).to_have_count(1)
    expect(row(page, strasse)).to_be_visible()
    search(page, "Nobody")
    expect(page.get_by_test_id("orders-empty")).to_have_text("No orders match.")

    page.get_by_test_id("filter-clear").click()
    expect(rows).to_have_count(4)
    page.get_by_test_id("sort").click()
    expect(page.get_by_test_id("sort")).to_have_text("Oldest first")
    expect(rows.first).to_have_attribute("data-order-id", strasse)

    # More than a page: the cursor pages on in the order chosen (oldest first now).
    paged = sorted(submit(server, PAGE_SIZE + 5, customer="Paged {n}"))  # ids sort by time
    search(page, "paged")
    expect(rows.first).to_have_attribute("data-order-id", paged[0])  # the search's answer
    expect(rows).to_have_count(PAGE_SIZE)
    assert ids_shown(page) == paged[:PAGE_SIZE]
    page.get_by_test_id("page-next").click()
    expect(page.get_by_test_id("page-number")).to_have_text("Page 2")
    expect(rows).to_have_count(5)
    assert ids_shown(page) == paged[PAGE_SIZE:]
    page.get_by_test_id("sort").click()  # newest first, from the first page again
    expect(page.get_by_test_id("page-number")).to_have_text("Page 1")
    expect(rows.first).to_have_attribute("data-order-id", paged[-1])
    assert ids_shown(page) == paged[::-1][:PAGE_SIZE]


def test_bulk_cancel_and_retry_of_picked_rows_and_of_all_matching_ask_first_with_the_count(
    page: Page, serve: ServerFactory, store_url: str
) -> None:
    server = serve(*SHIPPER, database_url=store_url)
    with server.client() as client:
        first, second, third = (post_order(client, f"Bulk {n}") for n in range(3))
        keep = post_order(client, "Keep Me")
    open_dashboard(page, server)
    expect(page.get_by_test_id("order-row")).to_have_count(4)

    for order_id in (first, second):
        row(page, order_id).get_by_test_id("row-select").check()
    expect(page.get_by_test_id("selected-count")).to_have_text("2 orders selected")
    page.get_by_test_id("bulk-cancel-selected").click()
    confirm(page, "Cancel 2 selected orders?")
    expect(page.get_by_test_id("bulk-result")).to_have_text("2 orders cancelled.")
    for order_id in (first, second):
        expect(row(page, order_id)).to_have_attribute("data-status", "cancelled")
    expect(page.get_by_test_id("selected-count")).to_have_text("0 orders selected")

    # All matching the filter: a dry run counts them (the two cancelled do not count).
    search(page, "bulk")
    expect(page.get_by_test_id("order-row")).to_have_count(3)
    page.get_by_test_id("bulk-cancel-matching").click()
    expect(page.get_by_test_id("confirm-text")).to_have_text(
        "Cancel 1 pending or processing order matching the filters?"
    )
    page.get_by_test_id("confirm-no").click()
    expect(page.get_by_test_id("bulk-result")).to_have_text("Nothing done.")
    expect(row(page, third)).to_have_attribute("data-status", "pending")
    page.get_by_test_id("bulk-cancel-matching").click()
    confirm(page, "Cancel 1 pending or processing order matching the filters?")
    expect(page.get_by_test_id("bulk-result")).to_have_text("1 order cancelled.")
    expect(row(page, third)).to_have_attribute("data-status", "cancelled")
    with server.client() as client:
        assert client.get(f"/orders/{keep}").json()["status"] == "pending"

        refused = [post_order(client, f"Refuse {n}") for n in range(2)]
    page.get_by_test_id("filter-clear").click()
    page.get_by_test_id("process").click()
    for order_id in refused:
        expect(row(page, order_id)).to_have_attribute("data-status", "failed")
    row(page, refused[0]).get_by_test_id("row-select").check()
    page.get_by_test_id("bulk-retry-selected").click()
    confirm(page, "Retry 1 selected order?")
    # Auto-process is off: the answer's note says what the retried order waits for.
    expect(page.get_by_test_id("bulk-result")).to_have_text(
        "1 order sent back to pending. Note: retried orders wait in pending until"
        " POST /orders/process (auto-process is off)."
    )
    expect(row(page, refused[0])).to_have_attribute("data-status", "pending")

    page.get_by_test_id("filter-status").select_option("failed")
    expect(page.get_by_test_id("order-row")).to_have_count(1)
    page.get_by_test_id("bulk-retry-matching").click()
    confirm(page, "Retry 1 failed order matching the filters?")
    expect(page.get_by_test_id("bulk-result")).to_contain_text("1 order sent back to pending.")
    expect(page.get_by_test_id("orders-empty")).to_be_visible()  # none failed any more
    with server.client() as client:
        assert {client.get(f"/orders/{i}").json()["status"] for i in refused} == {"pending"}


def test_the_chart_shows_the_last_24_hours_as_the_service_counts_them_to_any_new_page(
    page: Page, new_page: Page, serve: ServerFactory, store_url: str
) -> None:
    """Not "since this page opened": a page opened after the orders shipped sees them, and on a
    database store so does a page of a new server process."""
    server = serve(*SHIPPER, database_url=store_url)
    with server.client() as client:
        shipped = [post_order(client, f"Customer {n}") for n in range(3)]
        post_order(client, "Refuse Rita")
        assert client.post("/orders/process").status_code == 202
        eventually_sync(lambda: client.get("/orders/stats").json()["by_status"].get("pending", 1)
                        == 0 and client.get("/orders/stats").json()["by_status"].get(
                            "processing", 0) == 0)  # fmt: skip
        assert client.get(f"/orders/{shipped[0]}").json()["status"] == "shipped"

    open_dashboard(new_page, server)  # opened after every order was submitted and shipped
    expect(new_page.get_by_test_id("chart-submitted")).to_have_text("4")
    expect(new_page.get_by_test_id("chart-shipped")).to_have_text("3")
    expect(new_page.get_by_test_id("chart-failed")).to_have_text("1")
    expect(new_page.get_by_test_id("throughput-total")).to_have_text(
        "3 shipped in the last 24 hours"
    )
    expect(new_page.locator('[data-testid="chart"] rect.shipped[data-count="3"]')).to_have_count(1)

    if store_url == "memory://":
        return
    server.terminate()
    again = serve(*SHIPPER, database_url=store_url)
    open_dashboard(page, again)
    expect(page.get_by_test_id("chart-submitted")).to_have_text("4")
    expect(page.get_by_test_id("chart-shipped")).to_have_text("3")


def test_the_instances_view_lists_the_processors_on_the_store(
    page: Page, serve: ServerFactory, store_url: str
) -> None:
    server = serve(database_url=store_url)
    open_dashboard(page, server)
    instances = page.get_by_test_id("instance-row")
    expect(instances).to_have_count(1)
    expect(instances.first).to_have_attribute("data-live", "true")
    expect(instances.first.get_by_test_id("instance-state")).to_have_text("live")
    expect(instances.first.get_by_test_id("instance-held")).to_have_text("0")
    expect(page.get_by_test_id("instances-summary")).to_have_text("1 live of 1")
    if not store_url.startswith("postgresql"):
        return  # one process per store: memory is its own, a SQLite file is one process's
    other = serve(database_url=store_url)
    expect(instances).to_have_count(2)
    expect(page.get_by_test_id("instances-summary")).to_have_text("2 live of 2")
    other.terminate()  # a clean stop: listed as gone at once
    expect(page.get_by_test_id("instances-summary")).to_have_text("1 live of 2")
    expect(page.locator('[data-testid="instance-row"][data-live="false"]')).to_have_count(1)
    expect(instances.last.get_by_test_id("instance-state")).to_have_text("gone")


def test_the_webhooks_view_shows_state_lag_and_deliveries_and_replays_from_a_seq(
    page: Page, serve: ServerFactory, receiver: Receiver
) -> None:
    receiver.answer = replying(500)
    # A failed delivery is tried again only after a minute: meanwhile the cursor stays.
    server = serve("--webhook-allow-private", "--webhook-retry-schedule", "60")
    with server.client() as client:
        webhook = client.post("/webhooks", json={"url": receiver.url, "secret": SECRET}).json()
        post_order(client, "Ann")
        post_order(client, "Bob")
    open_dashboard(page, server)
    hook = page.locator(f'[data-testid="webhook-row"][data-webhook-id="{webhook["id"]}"]')
    expect(hook).to_have_attribute("data-state", "enabled")
    expect(hook.get_by_test_id("webhook-lag")).to_have_text("2")  # two events, none delivered

    hook.get_by_test_id("webhook-show").click()
    delivery = page.get_by_test_id("delivery-row").first
    expect(delivery).to_have_attribute("data-seq", "1")
    expect(delivery.get_by_test_id("delivery-status")).to_have_text("500")
    expect(delivery.get_by_test_id("delivery-latency")).to_have_text(_MILLISECONDS)
    expect(delivery).to_have_attribute("data-outcome", "retrying")

    receiver.answer = accept
    page.get_by_test_id("replay-seq").fill("0")
    page.get_by_test_id("replay").click()
    expect(page.get_by_test_id("replay-result")).to_contain_text("Delivering again after seq 0")
    expect(hook.get_by_test_id("webhook-lag")).to_have_text("0")
    expect(page.locator('[data-testid="delivery-row"][data-outcome="delivered"]')).to_have_count(2)

    receiver.answer = replying(410)  # the receiver is gone: the subscription is disabled
    with server.client() as client:
        post_order(client, "Cy")
    expect(hook).to_have_attribute("data-state", "disabled")
    expect(hook.get_by_test_id("webhook-state")).to_contain_text("disabled")


def test_the_detail_follows_the_order_after_an_action_and_says_what_a_retry_waits_for(
    page: Page, serve: ServerFactory
) -> None:
    """It used to keep saying "Now pending." after the retried order shipped."""
    server = serve(*SHIPPER)
    with server.client() as client:
        once = post_order(client, "Once Refused")
    open_dashboard(page, server)
    expect(page.get_by_test_id("auto-process-hint")).to_be_visible()
    page.get_by_test_id("process").click()
    expect(row(page, once)).to_have_attribute("data-status", "failed")
    row(page, once).click()
    page.get_by_test_id("detail-retry").click()
    expect(page.get_by_test_id("detail-message")).to_have_text("Now pending.")
    expect(page.get_by_test_id("detail-note")).to_have_text(
        "retried orders wait in pending until POST /orders/process (auto-process is off)"
    )
    page.get_by_test_id("process").click()
    expect(page.get_by_test_id("detail-status")).to_have_attribute("data-status", "shipped")
    expect(page.get_by_test_id("detail-message")).to_have_text("Now shipped.")
    expect(page.get_by_test_id("detail-note")).to_be_hidden()


def test_with_auto_process_there_is_no_hint_and_orders_ship_by_themselves(
    page: Page, serve: ServerFactory
) -> None:
    server = serve("--auto-process")
    open_dashboard(page, server)
    with server.client() as client:
        order_id = post_order(client, "Ann")
    expect(row(page, order_id)).to_have_attribute("data-status", "shipped")
    expect(page.get_by_test_id("auto-process-hint")).to_be_hidden()
