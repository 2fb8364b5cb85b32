"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright's Python
package (which downloads no browser here: it launches /usr/bin/chromium, which
`.ci/install-browser` installs), against a real `orderflow serve` in a subprocess.

Without Chromium the browser tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    expect,
    sync_playwright,
)

from tests.backends import BACKENDS
from tests.postgres import create_database, drop_database
from tests.receivers import Receiver, Threaded
from tests.servers import Server

CHROMIUM = os.environ.get("ORDERFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in CI, where Chromium's sandbox will not start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What the page does takes a few hundred milliseconds (a shipment takes 0.3 s); this is the most
# any expectation waits, not a pause.
expect.set_options(timeout=10_000)

ServerFactory = Callable[..., Server]
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; `launch` gives it a fresh, temporary profile."""
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (install it with .ci/install-browser)"
        if os.environ.get("CI") == "true":
            raise AssertionError(f"Chromium is required under CI: {message}")
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A tab 1280 by 800 in a context of its own (empty storage); a script error or a refused
    resource (Content-Security-Policy) fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # A refused request (a 401 before the token, say) is logged too: the page handles it.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.on("console", on_console)
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(
    params=[
        pytest.param(b, marks=[pytest.mark.postgres] if b == "postgres" else []) for b in BACKENDS
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A `--database-url` of each store in tests/backends.py, new and empty (SQLite: a file;
    PostgreSQL: a database of its own, dropped afterwards), for the tests whose page shows what
    the store keeps."""
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'orders.db'}"
    else:
        # In a thread: Playwright's own event loop runs in this one.
        url = _in_a_thread(create_database())
        try:
            yield url
        finally:
            _in_a_thread(drop_database(url))


def _in_a_thread(work: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """`serve(*flags, database_url=…)` starts `orderflow serve --ship-delay 0.3` on a free port
    (in memory unless told); each is stopped with SIGTERM at the end (so coverage is written),
    killed if it hangs."""
    started: list[Server] = []

    class Tracked(Server):
        def __init__(self, *flags: str, database_url: str = "memory://") -> None:
            started.append(self)  # first: a server that never got ready is stopped too
            log_path = tmp_path / f"server-{len(started)}.log"
            flags = ("--database-url", database_url, "--ship-delay", "0.3", *flags)
            super().__init__(*flags, log_path=log_path)

    yield Tracked
    for server in started:
        if not hasattr(server, "process"):
            continue
        try:
            server.terminate(timeout_s=15)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver (tests/receivers.py) on a loopback port, served from a thread of its
    own; it answers what its `answer` says (204 unless a test changes it)."""
    runner = Threaded(Receiver())
    yield runner.start()
    runner.close()


def row(page: Page, order_id: str) -> Locator:
    """The table row of an order."""
    return page.locator(f'[data-testid="order-row"][data-order-id="{order_id}"]')


def open_dashboard(page: Page, server: Server) -> None:
    """Open the page and wait until it is live and has loaded its first list."""
    page.goto(server.url + "/")
    expect(page.get_by_test_id("live")).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("page-number")).to_have_text("Page 1")


def search(page: Page, text: str) -> None:
    """Type `text` into the search box and search."""
    page.get_by_test_id("search").fill(text)
    page.get_by_test_id("filter-apply").click()


def confirm(page: Page, text: str) -> None:
    """The confirmation asks `text` (a part of it); answer yes."""
    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    expect(page.get_by_test_id("confirm-text")).to_contain_text(text)
    page.get_by_test_id("confirm-yes").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
