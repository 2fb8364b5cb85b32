"""Where a real `orderflow serve` lets webhooks go, in memory and on PostgreSQL: URLs that
cannot be sent, or that lead to this machine or its networks (its own database, metrics or
API, a cloud's metadata address), are refused with a 422 naming `url`, and `--webhook` to one
stops the start, unless `--webhook-allow-private`; a subscription stored before these rules,
whose host no resolver takes, is a failed attempt retried on its schedule and then given up,
not an error logged on every poll. Only loopback is ever dialled; no name is resolved."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import eventually_sync
from tests.e2e.conftest import start_refused
from tests.helpers import submit
from tests.postgres import query
from tests.receivers import SECRET, Receiver
from tests.servers import Server

pytestmark = pytest.mark.e2e

FAST = ("--auto-process", "--ship-delay", "0", "--poll-interval", "0.1")
LONG_LABEL = "a" * 64


@pytest.fixture
def receiver(threaded: Callable[[Receiver], Receiver]) -> Receiver:
    return threaded(Receiver())


def refused(server: Server, url: str) -> dict[str, Any]:
    with server.client() as client:
        answer = client.post("/webhooks", json={"url": url})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    [error] = answer.json()["errors"]
    assert error["field"] == "url"
    message: str = error["message"]
    return {"message": message}


def test_urls_that_cannot_be_sent_or_lead_inside_are_422(
    serve: type[Server], store_flags: tuple[str, ...]
) -> None:
    """Each was answered 201: the long label then logged a traceback on every poll, and the
    others made the service call internal services."""
    server = serve(*FAST, *store_flags)
    own = f"127.0.0.1:{server.port}"
    cases = {
        f"http://{LONG_LABEL}/hook": "each label of the host (between dots) must be at most 63",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
        "http://10.0.0.1/": "10.0.0.1 is a private address",
        "http://192.168.1.1/": "192.168.1.1 is a private address",
        "http://0/": "the host 0 is an IPv4 address in a short form: write it as 0.0.0.0",
        "http://0x7f000001/": "the host 0x7f000001 is an IPv4 address in a short form",
        "http://127.0.0.1:5432/": "127.0.0.1 is a loopback address",
        f"http://{own}/metrics": "127.0.0.1 is a loopback address",
        f"http://{own}/orders/process": "127.0.0.1 is a loopback address",
    }
    for url, why in cases.items():
        assert refused(server, url)["message"].startswith(why), url
    with server.client() as client:
        assert client.get("/webhooks").json()["count"] == 0
    assert "Traceback" not in server.output()


def test_allow_private_lets_a_loopback_receiver_subscribe(
    serve: type[Server], store_flags: tuple[str, ...], receiver: Receiver
) -> None:
    server = serve(*FAST, *store_flags, "--webhook-allow-private")
    with server.client() as client:
        created = client.post("/webhooks", json={"url": receiver.url, "secret": SECRET})
        assert created.status_code == 201, created.text
    submit(server, 1, threads=1)
    eventually_sync(lambda: "evt_1" in receiver.acked)


def test_a_webhook_flag_to_an_internal_address_stops_the_start(receiver: Receiver) -> None:
    stderr = start_refused("--webhook", receiver.url, "--webhook-secret", SECRET)
    assert stderr.startswith(
        "orderflow: --webhook: 127.0.0.1 is a loopback address; webhooks may not go to"
    ), stderr
    assert "--webhook-allow-private" in stderr


def test_the_allow_private_variable_lets_a_webhook_flag_name_loopback(
    serve: type[Server], receiver: Receiver
) -> None:
    env = {"ORDERFLOW_WEBHOOK_ALLOW_PRIVATE": "1"}
    server = serve(*FAST, "--webhook", receiver.url, "--webhook-secret", SECRET, env=env)
    submit(server, 1, threads=1)
    eventually_sync(lambda: "evt_1" in receiver.acked)


@pytest.mark.postgres
def test_a_stored_subscription_no_resolver_takes_is_retried_then_given_up_quietly(
    serve: type[Server], database_url: str, receiver: Receiver
) -> None:
    """It jammed: every poll logged `delivering webhooks failed` with a 55-line UnicodeError
    traceback (14 per 10 s on PostgreSQL), the cursor never moved, nothing was recorded."""
    server = serve(
        *FAST, "--database-url", database_url, "--webhook-retry-schedule", "0.05,0.05",
        "--webhook-allow-private",
    )  # fmt: skip
    webhook_id = "wh_" + secrets.token_hex(12)
    query(
        database_url,
        "INSERT INTO webhooks (id, url, types, secret, ordered, created_at, cursor)"
        " VALUES ($1, $2, '{}', $3, true, now(), 0)",
        webhook_id,
        f"http://{LONG_LABEL}/hook",  # as made before the rules
        SECRET,
    )
    with server.client() as client:
        healthy = client.post("/webhooks", json={"url": receiver.url, "secret": SECRET})
        assert healthy.status_code == 201
    submit(server, 1, threads=1)

    def given_up() -> list[dict[str, Any]] | None:
        with server.client() as client:
            log: list[dict[str, Any]] = client.get(f"/webhooks/{webhook_id}/deliveries").json()[
                "deliveries"
            ]
        wanted = [d for d in log if d["seq"] == 1]
        return wanted if wanted and wanted[0]["outcome"] == "given_up" else None

    attempts = eventually_sync(given_up)[::-1]
    assert [d["outcome"] for d in attempts] == ["retrying", "retrying", "given_up"]
    for attempt in attempts:
        assert attempt["status_code"] is None
        assert "label too long" in attempt["error"]
    eventually_sync(lambda: {"evt_1", "evt_2", "evt_3"} <= set(receiver.acked))  # the others'
    output = server.output()
    assert "Traceback" not in output
    assert " ERROR " not in output
    assert "delivering webhooks failed" not in output
