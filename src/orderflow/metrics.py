"""Metrics: what the service counts, and their Prometheus exposition by `prometheus_client`.

The hot paths (every request, every shipment) only add to plain integers here: a labelled
prometheus_client metric costs a dict lookup and a lock per update, measurable at tens of
thousands of requests a second. At scrape time a `prometheus_client` collector turns the numbers
into metric families, and `prometheus_client` writes the text format. Store-wide gauges (orders
by status, the oldest pending order) are read from the store at scrape time, so every instance
shows the same values; process metrics are each instance's own.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SHIPMENT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LEAD_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
# Failure reasons fall in a few classes (the label set stays bounded whatever the reasons say).
FAILURE_CLASSES = ("timeout", "permanent", "retries_exhausted")


class Histogram:
    """Bucket counts and a sum, updated without locks (one event loop) and read at scrape."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as Prometheus wants them, ending with +Inf."""
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class RouteStats:
    """One route template's requests: counts by method and status class, and latencies."""

    __slots__ = ("by_method", "seconds")

    def __init__(self) -> None:
        self.by_method: dict[str, list[int]] = {}
        self.seconds = Histogram(_REQUEST_BUCKETS)

    def record(self, method: str, status: int, seconds: float) -> None:
        counts = self.by_method.get(method)
        if counts is None:
            counts = self.by_method[method] = [0] * 6
        counts[status // 100] += 1
        histogram = self.seconds  # Histogram.observe, inline: this runs for every request
        histogram.counts[bisect.bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds


@dataclass
class Metrics:
    """Everything counted in this process. One instance per process (`METRICS`), like
    prometheus_client's own default registry."""

    routes: dict[str, RouteStats] = field(default_factory=dict)
    submitted: int = 0
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    reattempts: int = 0
    shipment_seconds: Histogram = field(default_factory=lambda: Histogram(_SHIPMENT_BUCKETS))
    submit_to_shipped_seconds: Histogram = field(default_factory=lambda: Histogram(_LEAD_BUCKETS))
    renewals: int = 0
    rescues: int = 0
    handbacks: int = 0
    store_errors: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)
    # Read at scrape time from whoever knows (the runtime sets these).
    gauges: dict[str, Any] = field(default_factory=dict)

    def route(self, template: str) -> RouteStats:
        """The stats of a route template (a route keeps its own: no lookup per request)."""
        stats = self.routes.get(template)
        if stats is None:
            stats = self.routes[template] = RouteStats()
        return stats


_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
METRICS = Metrics()


def failure_class(reason: str | None, *, permanent: bool) -> str:
    if permanent:
        return "permanent"
    return "timeout" if reason == "timeout" else "retries_exhausted"


class _Collector:
    """Renders `Metrics` and the scrape-time gauges as metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "orderflow_http_requests", "HTTP requests by route template, method and status class",
            labels=("route", "method", "status"),
        )  # fmt: skip
        for route, stats in sorted(m.routes.items()):
            for method, counts in sorted(stats.by_method.items()):
                for status, count in enumerate(counts):
                    if count:
                        requests.add_metric((route, method, _STATUS_CLASS[status]), count)
        yield requests
        latency = HistogramMetricFamily(
            "orderflow_http_request_duration_seconds", "Time to answer, by route template",
            labels=("route",),
        )  # fmt: skip
        for route, stats in sorted(m.routes.items()):
            if stats.by_method:
                latency.add_metric((route,), stats.seconds.buckets(), stats.seconds.sum)
        yield latency
        yield CounterMetricFamily(
            "orderflow_orders_submitted", "Orders submitted to this instance", value=m.submitted
        )
        transitions = CounterMetricFamily(
            "orderflow_order_transitions",
            "Outcomes written by this instance's processor, by event and result"
            " (written, or refused: the order was no longer held)",
            labels=("event", "result"),
        )
        for (event, result), count in sorted(m.transitions.items()):
            transitions.add_metric((event, result), count)
        yield transitions
        failures = CounterMetricFamily(
            "orderflow_order_failures", "Orders failed by this instance, by reason class",
            labels=("reason_class",),
        )  # fmt: skip
        for reason_class in FAILURE_CLASSES:
            failures.add_metric((reason_class,), m.failures[reason_class])
        yield failures
        yield CounterMetricFamily(
            "orderflow_shipment_retries", "Failed attempts retried", value=m.reattempts
        )
        yield _histogram("orderflow_shipment_duration_seconds", "One shipment attempt",
                         m.shipment_seconds)  # fmt: skip
        yield _histogram("orderflow_submit_to_shipped_seconds", "From submit to shipped",
                         m.submit_to_shipped_seconds)  # fmt: skip
        yield CounterMetricFamily(
            "orderflow_lease_renewals",
            "Heartbeats that renewed this instance's holds",
            value=m.renewals,
        )
        yield CounterMetricFamily(
            "orderflow_rescues",
            "Orders this instance rescued from a silent holder",
            value=m.rescues,
        )
        yield CounterMetricFamily(
            "orderflow_handbacks", "Orders this instance handed back unfinished", value=m.handbacks
        )
        errors = CounterMetricFamily(
            "orderflow_store_errors", "Store calls that failed, by kind", labels=("kind",)
        )
        for kind in ("unavailable", "outcome_unknown", "refused_data"):
            errors.add_metric((kind,), m.store_errors[kind])
        yield errors
        deliveries = CounterMetricFamily(
            "orderflow_webhook_deliveries", "Webhook delivery attempts, by result",
            labels=("result",),
        )  # fmt: skip
        for result, count in sorted(m.deliveries.items()):
            deliveries.add_metric((result,), count)
        yield deliveries
        gauges = m.gauges
        by_status = GaugeMetricFamily(
            "orderflow_orders", "Orders in the store, by status (the same on every instance)",
            labels=("status",),
        )  # fmt: skip
        for status, count in sorted(gauges.get("by_status", {}).items()):
            by_status.add_metric((str(status),), count)
        yield by_status
        for name, help_text in _GAUGES.items():
            if name in gauges:
                yield GaugeMetricFamily(f"orderflow_{name}", help_text, value=gauges[name])


_GAUGES = {
    "oldest_pending_age_seconds": "Age of the oldest pending order (0 when none)",
    "shipments_in_flight": "Shipments under way in this instance",
    "held_orders": "Orders this instance holds (queued or shipping)",
    "event_log_last_seq": "The newest event's seq",
    "webhook_delivery_lag_events": "Events not yet delivered to the furthest-behind webhook",
}


def _histogram(name: str, help_text: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text)
    family.add_metric((), histogram.buckets(), histogram.sum)
    return family


def registry(metrics: Metrics = METRICS) -> CollectorRegistry:
    """A registry with our metrics and this process's own (CPU, memory, open files, GC)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def now() -> float:
    return time.perf_counter()
