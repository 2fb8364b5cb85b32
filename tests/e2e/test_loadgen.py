"""`orderflow bench` against a real server: it submits, triggers and follows every order, and
says so in a table of `name  value` lines (checked as parsed values, not as padded strings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port
from tests.servers import Server

pytestmark = pytest.mark.e2e

_ROW = re.compile(r"^(?P<name>\S.*?\S)\s{2,}(?P<value>\S.*)$")
_PROGRESS = re.compile(r"^(submitted|finished) ([\d,]+) of ([\d,]+)$")


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`orderflow bench *args`, its output captured (so stderr is not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "orderflow", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def report(stdout: str) -> dict[str, str]:
    """The table bench prints: each `name  value` line as name → value."""
    rows = {}
    for line in stdout.splitlines():
        match = _ROW.match(line)
        assert match, f"not a `name  value` line: {line!r}"
        rows[match["name"]] = match["value"]
    return rows


def count(value: str) -> int:
    return int(value.replace(",", ""))


def quantity(value: str, unit: str) -> float:
    """The number of a `value` such as `1,234.5 ms`, which must be in `unit`."""
    number, _, found = value.partition(" ")
    assert found == unit, value
    return float(number.replace(",", ""))


def test_bench_submits_triggers_and_follows_every_order(serve: type[Server]) -> None:
    server = serve("--ship-delay", "0.01", "--log-level", "warning")
    out = bench("--url", server.url, "--orders", "300", "--concurrency", "8", "--timeout", "60")
    assert out.returncode == 0, out.stderr
    rows = report(out.stdout)
    assert count(rows["orders submitted"]) == 300
    assert count(rows["orders shipped"]) == 300
    assert count(rows["failed requests"]) == 0
    assert not {"orders failed", "orders unfinished", "orders deleted"} & rows.keys()
    assert quantity(rows["submit throughput"], "orders/s") > 0
    latencies = [
        quantity(rows[f"submit latency {name}"], "ms") for name in ("p50", "p90", "p99", "max")
    ]
    assert 0 < latencies[0] <= latencies[1] <= latencies[2] <= latencies[3]
    assert quantity(rows["until the last order left processing"], "s") > 0
    with server.client() as client:  # what it reported is what happened
        assert client.get("/orders/stats").json()["by_status"]["shipped"] == 300


def test_bench_prints_progress_lines_when_stderr_is_not_a_terminal(
    serve: type[Server],
) -> None:
    server = serve("--ship-delay", "0", "--log-level", "warning")
    out = bench("--url", server.url, "--orders", "40", "--timeout", "60")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    progress = [_PROGRESS.match(line) for line in lines]
    assert all(progress), lines  # nothing else, and no terminal bars
    assert "submitted 40 of 40" in lines
    assert "finished 40 of 40" in lines


def test_bench_takes_host_and_port_without_a_scheme(serve: type[Server]) -> None:
    server = serve("--ship-delay", "0", "--log-level", "warning")
    out = bench("--url", f"127.0.0.1:{server.port}", "--orders", "20", "--timeout", "60")
    assert out.returncode == 0, out.stderr
    rows = report(out.stdout)
    assert count(rows["orders submitted"]) == 20
    assert count(rows["orders shipped"]) == 20


def test_bench_sends_its_token(serve: type[Server], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("operate bench-token-0123456789\n")
    server = serve("--ship-delay", "0", "--log-level", "warning", "--auth-tokens", str(tokens))
    url = f"127.0.0.1:{server.port}"
    out = bench("--url", url, "--orders", "10", "--token", "bench-token-0123456789")
    assert out.returncode == 0, out.stderr
    assert count(report(out.stdout)["orders shipped"]) == 10
    refused = bench("--url", url, "--orders", "10", "--timeout", "5")
    assert refused.returncode == 1
    rows = report(refused.stdout)
    assert count(rows["orders submitted"]) == 0
    assert count(rows["failed requests"]) == 11  # ten submits and the trigger: 401 each


def test_bench_against_nothing_fails_in_one_line() -> None:
    port = free_port()
    out = bench("--url", f"http://127.0.0.1:{port}", "--orders", "3")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    [line] = out.stderr.splitlines()
    assert f"cannot reach http://127.0.0.1:{port}" in line
