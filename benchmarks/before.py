"""Before and after: the service as it was before its HTTP layer was rebuilt (commit 80a1136,
installed from this repository's history into a temporary virtualenv with that commit's own
pins) against today's, both served with their defaults on the same core, one after the other
in each round, on the same machine. Ratios of requests/s, median of the rounds: what moved,
whatever the machine (a ratio against a null app measured on another machine does not carry
over: the share of the time spent in Python differs with the interpreter's build). Each is
served as its commit serves it: 80a1136 ran granian's worker in a process of its own, today's
runs it embedded, so the ratios are of the whole service, server arrangement included."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.http import POST_LUA, ROUNDS, ensure_wrk, fill, wrk
from benchmarks.report import Row
from benchmarks.servers import free_port, orderflow_command, server

BEFORE = "80a1136"
ROOT = Path(__file__).parents[1]
# Today's over before's, at least: the range query's target (half as fast again).
TARGETS = {"GET /orders?from&to&limit=100": 1.5}


def install(ref: str, where: Path) -> Path:
    """Check `ref` out into `where`, install it into a virtualenv there; its Python."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(where / ".venv")], check=True)
    python = where / ".venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "."],
        cwd=where,
        check=True,
        capture_output=True,
    )
    return python


def cases_at(base: str, post: Path) -> dict[str, tuple[str, Path | None]]:
    """The cases' URLs (and wrk scripts: `post` for a POST) at `base`, once it holds orders."""
    one, start, end = fill(base)
    return {
        "POST /orders": (base + "/orders", post),
        "GET /orders/{id}": (base + f"/orders/{one}", None),
        "GET /orders?from&to&limit=100": (
            base + f"/orders?from={start}&to={end}&limit=100",
            None,
        ),
    }


def run() -> list[Row]:
    ensure_wrk()
    with ExitStack() as stack:
        where = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            python = install(BEFORE, where)
        except (OSError, subprocess.CalledProcessError) as exc:  # no history, no registry
            print(f"before: cannot install {BEFORE}: {exc}", file=sys.stderr)
            return [Row("before", f"not measured: {BEFORE} could not be installed", 0, "")]
        post = where / "post.lua"
        post.write_text(POST_LUA)
        cases: dict[str, dict[str, tuple[str, Path | None]]] = {}
        for name in ("before", "today"):
            port = free_port()
            command = (
                [str(python), "-m", "orderflow", "serve", "--port", str(port)]
                if name == "before"
                else orderflow_command(port)  # the defaults, as `make run`
            )
            url = stack.enter_context(server(command, port, ready_path="/healthz"))
            cases[name] = cases_at(url, post)
        results: dict[tuple[str, str], list[float]] = {}
        for n in range(ROUNDS):
            for case in cases["today"]:
                for name in ("before", "today")[:: 1 if n % 2 else -1]:  # either first
                    url, script = cases[name][case]
                    results.setdefault((case, name), []).append(wrk(url, script)[0])
    rows: list[Row] = []
    for case in cases["today"]:
        before, today = results[(case, "before")], results[(case, "today")]
        rows += [
            Row("before", f"{case} requests/s, {BEFORE}", statistics.median(before), "req/s"),
            Row("before", f"{case} requests/s, today", statistics.median(today), "req/s"),
        ]
        value = statistics.median(t / b for t, b in zip(today, before, strict=True))
        row = Row("before", f"{case}: today / {BEFORE}", value, "x")
        if (target := TARGETS.get(case)) is not None:
            row.target, row.holds = f"≥ {target:.2f}", value >= target
        rows.append(row)
    return rows
