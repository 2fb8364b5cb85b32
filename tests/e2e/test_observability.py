"""What an operator sees of a real `orderflow serve`: /metrics parsed with prometheus_client's
own parser (names, labels, values that match what was done, no order id anywhere), store-wide
gauges that two PostgreSQL instances agree on, and log lines in JSON (granian's too) with an
access log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually_sync
from tests.helpers import submit
from tests.servers import Server

pytestmark = pytest.mark.e2e

FAST = ("--auto-process", "--ship-delay", "0")


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics: (name, labels) → value."""
    with server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_count_what_was_done_by_route_template_without_order_ids(
    serve: type[Server],
) -> None:
    server = serve(*FAST)
    ids = submit(server, 20, threads=2)
    with server.client() as client:
        eventually_sync(
            lambda: client.get("/orders/stats").json()["by_status"]["shipped"] == len(ids)
        )
        for order_id in ids[:5]:
            assert client.get(f"/orders/{order_id}").status_code == 200
        assert client.get("/orders/order_0000000000000000000000000000ff").status_code == 404
        assert client.post("/orders", json={"customer": ""}).status_code == 422
        text = client.get("/metrics").text
    assert not any(order_id in text for order_id in ids), "an order id is in a label"
    families = {family.name: family for family in text_string_to_metric_families(text)}
    ours = {name for name in families if name.startswith("orderflow_")}
    assert {
        "orderflow_http_requests",
        "orderflow_http_request_duration_seconds",
        "orderflow_orders_submitted",
        "orderflow_order_transitions",
        "orderflow_orders",
        "orderflow_oldest_pending_age_seconds",
        "orderflow_shipments_in_flight",
        "orderflow_submit_to_shipped_seconds",
        "orderflow_shipment_duration_seconds",
        "orderflow_order_failures",
        "orderflow_store_errors",
    } <= ours
    assert set(families) - ours <= {
        name for name in families if name.startswith(("process_", "python_"))
    }
    samples = scrape(server)
    requests = "orderflow_http_requests_total"
    assert value(samples, requests, route="/orders", method="POST", status="2xx") == 20
    assert value(samples, requests, route="/orders", method="POST", status="4xx") == 1
    assert value(samples, requests, route="/orders/{id}", method="GET", status="2xx") == 5
    assert value(samples, requests, route="/orders/{id}", method="GET", status="4xx") == 1
    latency = "orderflow_http_request_duration_seconds_count"
    assert value(samples, latency, route="/orders/{id}") == 6
    assert value(samples, "orderflow_orders_submitted_total") == 20
    assert value(samples, "orderflow_orders", status="shipped") == 20
    assert value(samples, "orderflow_orders", status="pending") == 0
    assert value(samples, "orderflow_oldest_pending_age_seconds") == 0
    assert value(samples, "orderflow_submit_to_shipped_seconds_count") == 20
    assert value(samples, "orderflow_shipment_duration_seconds_count") == 20
    assert value(samples, "orderflow_order_transitions_total", event="ship", result="written") == 20
    assert value(samples, "orderflow_shipments_in_flight") == 0


@pytest.mark.postgres
def test_store_wide_gauges_are_the_same_on_every_instance(
    serve: type[Server], database_url: str
) -> None:
    """Orders submitted to one instance and not processed: both report the same counts by
    status and (within the second between the two scrapes) the same oldest pending age; each
    counts only its own requests."""
    first = serve("--database-url", database_url)
    second = serve("--database-url", database_url)
    submit(first, 7, threads=1)
    one, two = scrape(first), scrape(second)
    for status in ("pending", "processing", "shipped", "failed", "cancelled"):
        assert value(one, "orderflow_orders", status=status) == value(
            two, "orderflow_orders", status=status
        )
    assert value(two, "orderflow_orders", status="pending") == 7
    ages = (
        value(one, "orderflow_oldest_pending_age_seconds"),
        value(two, "orderflow_oldest_pending_age_seconds"),
    )
    assert min(ages) > 0
    assert abs(ages[0] - ages[1]) < 5
    assert value(one, "orderflow_orders_submitted_total") == 7
    assert value(two, "orderflow_orders_submitted_total") == 0


def test_json_logs_are_one_object_a_line_granians_included_with_an_access_log(
    serve: type[Server],
) -> None:
    server = serve("--log-format", "json", "--access-log", *FAST)
    [order_id] = submit(server, 1, threads=1)
    with server.client() as client:
        assert client.get(f"/orders/{order_id}").status_code == 200
    assert server.terminate() == 0
    records = [json.loads(line) for line in server.output().splitlines() if line]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["time"].endswith("Z")
    loggers = {record["logger"] for record in records}
    assert any(name.startswith("_granian") for name in loggers), loggers
    assert "orderflow.runtime" in loggers
    access = [record for record in records if record["logger"] == "orderflow.access"]
    lookup = next(record for record in access if record["path"] == f"/orders/{order_id}")
    assert lookup["method"] == "GET"
    assert lookup["route"] == "/orders/{id}"
    assert lookup["status"] == 200
    assert lookup["duration_ms"] >= 0
    assert any(record["route"] == "/orders" and record["status"] == 201 for record in access)


def test_the_event_log_and_webhook_lag_gauges_follow_the_store(serve: type[Server]) -> None:
    """A webhook whose receiver is down (nothing listens on port 9) falls behind by every event
    since it subscribed; the newest seq is the store's, read while nobody streams events."""
    server = serve("--webhook-retry-schedule", "3600", "--webhook-allow-private")
    with server.client() as client:
        created = client.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"})
        assert created.status_code == 201, created.text
    submit(server, 4, threads=1)
    samples = scrape(server)
    assert value(samples, "orderflow_event_log_last_seq") == 4
    assert value(samples, "orderflow_webhook_delivery_lag_events") == 4
