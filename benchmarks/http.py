"""HTTP: the real `orderflow serve` with its defaults (as `make run` starts it) on one core, wrk
on the other, 64 connections; the reference apps (`benchmarks.nullapp`: the ASGI and RSGI null
apps, and the floor of a POST /orders) on the same server and core. Rounds run each orderflow
case right after its reference twins, and every target is the median of the per-round ratios
(the machine is shared: side by side, not absolute)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx

from benchmarks.report import Row
from benchmarks.servers import (
    LOAD_CORE,
    free_port,
    nullapp_command,
    orderflow_command,
    pinned,
    server,
)

SECONDS = 4
ROUNDS = 3
CONNECTIONS = 64
ORDER = (
    '{"customer":"John Doe","items":[{"name":"Monster Energy","quantity":2},'
    '{"name":"Bar","quantity":1}]}'
)
POST_LUA = f"""wrk.method = "POST"
wrk.body = '{ORDER}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
        path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed and could not be installed")
    return path


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, script: Path | None = None) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of one wrk run against `url`."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(
        pinned(LOAD_CORE, command), capture_output=True, text=True, check=True, timeout=60
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed responses")
    return rps, p50, p99


def fill(base: str) -> tuple[str, str, str]:
    """Submit 1,000 orders to the service at `base`; one of their ids, and the `from` and `to`
    of a range of 100 of them."""
    with httpx.Client(base_url=base) as client:
        for _ in range(1000):
            response = client.post(
                "/orders", content=ORDER, headers={"content-type": "application/json"}
            )
            response.raise_for_status()
        orders = client.get("/orders", params={"limit": 1000}).raise_for_status().json()["orders"]
    return orders[500]["id"], orders[300]["timestamp"], orders[400]["timestamp"]


def run() -> list[Row]:
    ensure_wrk()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        post = tmp / "post.lua"
        post.write_text(POST_LUA)
        urls = {}
        for name, command in {
            "asgi": lambda port: nullapp_command(port, "asgi"),
            "rsgi": lambda port: nullapp_command(port, "rsgi"),
            "floor": lambda port: nullapp_command(port, "floor"),
            "app": lambda port: orderflow_command(port),  # the defaults, as `make run`
            "access": lambda port: orderflow_command(port, "--access-log"),
            "json": lambda port: orderflow_command(port, "--log-format", "json"),
        }.items():
            port = free_port()
            ready = "/healthz" if name not in ("asgi", "rsgi", "floor") else "/"
            urls[name] = stack.enter_context(server(command(port), port, ready_path=ready))
        app = urls["app"]
        one, start, end = fill(app)
        cases = {  # each orderflow case right after its null-app twins: they see the same machine
            "ASGI null app POST": (urls["asgi"] + "/orders", post),
            "RSGI null app POST": (urls["rsgi"] + "/orders", post),
            "floor app POST": (urls["floor"] + "/orders", post),
            "POST /orders": (app + "/orders", post),
            "POST /orders, --access-log": (urls["access"] + "/orders", post),
            "POST /orders, --log-format json": (urls["json"] + "/orders", post),
            "ASGI null app GET": (urls["asgi"] + f"/orders/{one}", None),
            "RSGI null app GET": (urls["rsgi"] + f"/orders/{one}", None),
            "GET /orders/{id}": (app + f"/orders/{one}", None),
            "GET /orders?from&to&limit=100": (
                app + f"/orders?from={start}&to={end}&limit=100",
                None,
            ),
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
        for _ in range(ROUNDS):
            for name, (url, script) in cases.items():
                results[name].append(wrk(url, script))
    medians = {
        name: tuple(statistics.median(r[i] for r in runs) for i in range(3))
        for name, runs in results.items()
    }
    rows: list[Row] = []
    for name, (rps, p50, p99) in medians.items():
        rows += [
            Row("http", f"{name} requests/s", rps, "req/s"),
            Row("http", f"{name} p50 / p99", p50, f"ms / {p99:.2f} ms"),
        ]

    def ratio(case: str, base: str) -> float:
        pairs = zip(results[case], results[base], strict=True)
        return statistics.median(a[0] / b[0] for a, b in pairs)

    for case, base, target in (
        ("POST /orders", "ASGI null app POST", 1.0),
        ("POST /orders", "RSGI null app POST", 0.75),
        ("GET /orders/{id}", "RSGI null app GET", 0.9),
    ):
        value = ratio(case, base)
        rows.append(Row("http", f"{case} / {base}", value, "x", f"≥ {target:.2f}", value >= target))
    for case, base in (  # the range query's target is against the code before: `before.py`
        ("GET /orders?from&to&limit=100", "ASGI null app GET"),
        ("floor app POST", "ASGI null app POST"),
        ("floor app POST", "RSGI null app POST"),
        ("POST /orders", "floor app POST"),
        ("POST /orders, --access-log", "POST /orders"),
        ("POST /orders, --log-format json", "POST /orders"),
    ):
        rows.append(Row("http", f"{case} / {base}", ratio(case, base), "x"))
    return rows
