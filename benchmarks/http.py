"""HTTP: the real `orderflow serve` on one core, wrk on the other, 64 connections, five rounds,
each case run right after its null-app twin on the same server; medians of requests/s, p50 and
p99, and each target the median of the five side-by-side ratios."""

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
ROUNDS = 5
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


def run() -> list[Row]:
    ensure_wrk()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        post = tmp / "post.lua"
        post.write_text(POST_LUA)
        null_port, app_port = free_port(), free_port()
        null = stack.enter_context(server(nullapp_command(null_port), null_port))
        app = stack.enter_context(
            server(orderflow_command(app_port), app_port, ready_path="/healthz")
        )
        with httpx.Client(base_url=app) as client:
            for _ in range(1000):
                client.post("/orders", content=ORDER, headers={"content-type": "application/json"})
            orders = client.get("/orders", params={"limit": 1000}).json()["orders"]
        one = orders[500]["id"]
        start, end = orders[300]["timestamp"], orders[400]["timestamp"]
        cases = {  # each case right after its null-app twin: the pair sees the same machine
            "null app POST": (null + "/orders", post),
            "POST /orders": (app + "/orders", post),
            "null app GET": (null + f"/orders/{one}", None),
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
    for app_case, null_case in (
        ("POST /orders", "null app POST"),
        ("GET /orders/{id}", "null app GET"),
    ):
        pairs = zip(results[app_case], results[null_case], strict=True)
        ratio = statistics.median(app[0] / null[0] for app, null in pairs)
        rows.append(Row("http", f"{app_case} / {null_case}", ratio, "x", "≥ 0.75", ratio >= 0.75))
    return rows
