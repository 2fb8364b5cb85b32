"""Helpers the test folders share (fixtures live in the nearest conftest.py): what the app
serves, the transition table as the tests state it, orders submitted over HTTP or in process,
a shipment's context, free ports and HTTP clients, webhook timers, a certificate; a search
paged alike whichever way a store reads it."""

from __future__ import annotations

import itertools
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
import pytest

from orderflow.api.routing import Route
from orderflow.domain import (
    Event,
    Item,
    OrderQuery,
    OrderStatus,
    new_order,
    new_order_id,
    search_key,
)
from orderflow.runtime import Runtime
from orderflow.server import build_app
from orderflow.service import OrderService
from orderflow.shipping import ShipContext
from orderflow.store.base import OrderStore

ROOT = Path(__file__).resolve().parents[1]

#: Every route the service serves, the API's own description included, as the app has them.
ROUTES: tuple[Route[Runtime], ...] = build_app(Runtime()).routes

# The state machine, written out once more by hand: a change to the table must change this too.
ALLOWED = {
    (OrderStatus.PENDING, Event.START): OrderStatus.PROCESSING,
    (OrderStatus.PENDING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.SHIP): OrderStatus.SHIPPED,
    (OrderStatus.PROCESSING, Event.FAIL): OrderStatus.FAILED,
    (OrderStatus.PROCESSING, Event.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.PROCESSING, Event.RELEASE): OrderStatus.PENDING,
    (OrderStatus.PROCESSING, Event.REATTEMPT): OrderStatus.PROCESSING,
    (OrderStatus.PROCESSING, Event.HANDBACK): OrderStatus.PROCESSING,
    (OrderStatus.FAILED, Event.RETRY): OrderStatus.PENDING,
}

# Webhook delivery on short timers: retries after 50, 100 and 200 ms; due work looked for every
# 50 ms; receivers on loopback allowed.
FAST = {
    "webhook_retry_schedule": "0.05,0.1,0.2",
    "poll_interval": 0.05,
    "webhook_timeout": 2.0,
    "webhook_allow_private": True,
}

# -- orders submitted ------------------------------------------------------------------------------

CUSTOMER = "John Doe"
ITEMS: list[dict[str, Any]] = [{"name": "Monster Energy", "quantity": 2}]
ORDER = {"customer": CUSTOMER, "items": ITEMS}


class Reachable(Protocol):
    """A running service, as far as submitting goes: where it answers."""

    @property
    def url(self) -> str: ...


def post_order(
    client: httpx.Client,
    customer: str = CUSTOMER,
    *,
    items: list[dict[str, Any]] = ITEMS,
    headers: dict[str, str] | None = None,
) -> str:
    """POST one order through `client`, which must answer 201; its id."""
    response = client.post("/orders", json={"customer": customer, "items": items}, headers=headers)
    assert response.status_code == 201, response.text
    order_id: str = response.json()["id"]
    return order_id


def submit(
    servers: Reachable | Sequence[Reachable],
    count: int,
    *,
    threads: int = 10,
    customer: str = CUSTOMER,
    items: list[dict[str, Any]] = ITEMS,
) -> list[str]:
    """POST `count` orders over HTTP from `threads` threads (a client each), thread n to
    `servers[n % len(servers)]`; each must answer 201. `customer` may hold ``{n}``, the
    order's number. Their ids, by thread."""
    urls = [servers.url] if not isinstance(servers, Sequence) else [s.url for s in servers]

    def share(thread: int) -> list[str]:
        with http_client(urls[thread % len(urls)]) as client:
            return [
                post_order(client, customer.format(n=n), items=items)
                for n in range(thread, count, threads)
            ]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [order_id for ids in pool.map(share, range(threads)) for order_id in ids]


async def submit_many(
    service: OrderService,
    count: int,
    customer: str = "Ada",
    items: tuple[Item, ...] = (Item("Widget", 2),),
) -> list[str]:
    """Submit `count` orders in process (`customer` may hold ``{n}``, the order's number);
    their ids, oldest first."""
    return [(await service.submit(customer.format(n=n), items)).order_id for n in range(count)]


def ship_context(
    attempt: int = 1, deadline_s: float = 5, mark_taken: Callable[[], None] | None = None
) -> ShipContext:
    """What a shipper is handed: attempt `attempt`, due `deadline_s` from now, logging to
    "test"."""
    deadline = datetime.now(UTC) + timedelta(seconds=deadline_s)
    log = logging.getLogger("test")
    if mark_taken is None:
        return ShipContext(attempt=attempt, deadline=deadline, log=log)
    return ShipContext(attempt=attempt, deadline=deadline, log=log, mark_taken=mark_taken)


# -- the network -----------------------------------------------------------------------------------

# One TLS context for every client: httpx builds one per client otherwise (tens of ms each).
_TLS = ssl.create_default_context()


def http_client(base_url: str, timeout_s: float = 30) -> httpx.Client:
    """An HTTP client of `base_url`, cheap to make (one per thread is fine)."""
    return httpx.Client(base_url=base_url, timeout=timeout_s, verify=_TLS)


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `port` now."""
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


def self_signed(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made in `where`: (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key)),
            *("-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def assert_searches_page_alike(dense: OrderStore, by_key: OrderStore) -> None:
    """Two empty stores of one kind, `dense` with a search bound of 5 and `by_key` with the
    default, given the same 90 orders: a prefix that matches at least the bound walks the
    time order, at most 5 orders a page, and filters ("c", "ca", "cid" in `dense`); a rarer
    one reads its index and sorts ("r"; every prefix in `by_key`). Both find, page after page,
    what a list filtered by hand holds, in both sorts, with a status or a time window; the
    walk's pages may hold fewer orders (even none) before the last."""
    base = datetime(2026, 3, 1, tzinfo=UTC)
    when = [base + timedelta(seconds=n // 2) for n in range(90)]
    names = ["rare" if n in (10, 50, 80) else "cid" if n % 6 == 3 else "carol" for n in range(90)]
    orders = [new_order(new_order_id(w, n), c, (Item("sku", 1),), w)
              for n, (w, c) in enumerate(zip(when, names, strict=True))]  # fmt: skip
    cancelled = {o.id for o in orders[::4]}
    for store in (dense, by_key):
        for order in orders:
            await store.add(order)
        for order_id in cancelled:
            await store.transition(order_id, Event.CANCEL, base + timedelta(hours=1))
    windows: list[dict[str, Any]] = [
        {}, {"status": OrderStatus.CANCELLED}, {"start": when[21], "end": when[71]}
    ]  # fmt: skip
    short_pages = 0
    for text, limit, newest, window in itertools.product(
        ("c", "ca", "cid", "r", "x"), (1, 7, 100), (False, True), windows
    ):
        first = OrderQuery(customer=search_key(text), limit=limit, newest=newest, **window)
        expected = [
            o.id
            for o in sorted(orders, key=lambda o: o.id, reverse=newest)
            if o.customer.startswith(text)
            and (first.status is None or o.id in cancelled)
            and (first.start is None or first.start <= o.timestamp)
            and (first.end is None or o.timestamp < first.end)
        ]
        for store in (dense, by_key):
            found: list[str] = []
            query = first
            for _ in range(len(orders) + 1):
                page = await store.list_orders(query)
                assert len(page.orders) <= limit
                as_json = await store.list_orders_json(query)
                ids = [o["id"] for o in msgspec.json.decode(as_json.orders)]
                assert ids == [o.id for o in page.orders]
                assert as_json.next_cursor == page.next_cursor
                found += [o.id for o in page.orders]
                if page.next_cursor is None:
                    break
                short_pages += len(page.orders) < limit
                assert store is dense or len(page.orders) == limit
                query = msgspec.structs.replace(query, cursor=page.next_cursor)
            assert found == expected, (store, text, limit, newest, window)
    assert short_pages  # the walk stopped before the page was full
