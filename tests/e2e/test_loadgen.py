"""`orderflow bench` against a real server: it submits, triggers and follows every order."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.conftest import Server, free_port


def test_bench_submits_triggers_and_follows_every_order(serve: type[Server]) -> None:
    server = serve("--ship-delay", "0.01", "--log-level", "warning")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orderflow",
            "bench",
            "--url",
            server.url,
            "--orders",
            "300",
            "--concurrency",
            "8",
            "--timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "orders submitted                      300" in out.stdout
    assert "orders shipped                        300" in out.stdout
    assert "failed requests                       0" in out.stdout


def test_bench_against_nothing_fails_clearly() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orderflow",
            "bench",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--orders",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "cannot reach" in out.stderr
