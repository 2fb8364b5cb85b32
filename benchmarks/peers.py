"""A peer on the same PostgreSQL: PgQueuer (pinned, installed into a temporary virtualenv, never a
dependency of orderflow) drains no-op jobs, each consumer a process of its own running one
`QueueManager` in drain mode, beside orderflow's claimed-and-shipped on the same server.

A small sweep of consumers x batch size finds PgQueuer's best setting; then the two are measured
side by side, alternating which goes first, each on a fresh database: PgQueuer draining COUNT
jobs, one orderflow instance claiming and shipping COUNT orders (delay 0). A job counts when its
completion is committed: the time runs from the consumers' start (all connected and set up
before) to the exit of the last one, which flushes what it completed first, and the jobs table
is then read to check that every job went into PgQueuer's log as successful and none is left.
Beside each rate, the CPU per job split between the client's processes and PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import asyncpg

from benchmarks.pgserver import Cost, drop_database, measured, new_database
from benchmarks.postgres import ship
from benchmarks.report import Row

PGQUEUER = "pgqueuer==1.6.0"
DRIVER_PINS = ("asyncpg==0.32.0",)  # the driver orderflow uses, at orderflow's pin
COUNT = 100_000
SWEEP_COUNT = 30_000
SWEEP = [(consumers, batch) for consumers in (1, 5, 10) for batch in (100, 500)]
ROUNDS = 2
TARGET = 1.5  # orderflow's claimed-and-shipped over PgQueuer's best drain, at least

# One consumer: connects, registers a no-op entrypoint, says "ready", waits for a line on its
# standard input, drains, says its CPU seconds since the line, and keeps its connection open
# (its backend's CPU is read meanwhile) until its standard input closes.
_CONSUMER = """
import asyncio, resource, sys
import asyncpg
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

async def main(dsn, batch):
    connection = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(connection)))

    @manager.entrypoint("noop")
    async def noop(job):
        pass

    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    began = cpu()
    await manager.run(batch_size=batch, mode=QueueExecutionMode.drain)
    print("done", cpu() - began, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    await connection.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

_SETUP = """
import asyncio, sys
import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

async def main(dsn, count):
    connection = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(connection))
    await queries.install()
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
    await connection.execute("VACUUM ANALYZE")
    await connection.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def install(where: Path) -> Path:
    """PgQueuer in a virtualenv in `where`; its Python."""
    subprocess.run([sys.executable, "-m", "venv", str(where / ".venv")], check=True)
    python = where / ".venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", PGQUEUER, *DRIVER_PINS],
        check=True,
        capture_output=True,
    )
    (where / "consumer.py").write_text(_CONSUMER)
    (where / "setup.py").write_text(_SETUP)
    return python


def drain(python: Path, consumers: int, batch: int, count: int) -> Cost:
    """What `consumers` processes of PgQueuer (each fetching `batch` jobs at a time) cost to
    drain `count` no-op jobs from a fresh database."""
    where = python.parents[2]
    url = asyncio.run(new_database())
    try:
        subprocess.run(
            [str(python), str(where / "setup.py"), url, str(count)], check=True, capture_output=True
        )
        with ExitStack() as stack:
            processes = []
            for _ in range(consumers):
                process = subprocess.Popen(
                    [str(python), str(where / "consumer.py"), url, str(batch)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                stack.callback(_end, process)
                processes.append(process)
            for process in processes:
                assert process.stdout is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError("a PgQueuer consumer did not start")
            cost = asyncio.run(_drain(url, processes, count))
        return cost
    finally:
        asyncio.run(drop_database(url))


async def _drain(url: str, processes: list[subprocess.Popen[str]], count: int) -> Cost:
    async with measured(url, lambda: [p.pid for p in processes]) as measure:
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        cpu = 0.0
        for process in processes:  # each says so once its completions are committed
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 600)
            word, _, seconds = line.partition(" ")
            if word != "done":
                raise RuntimeError(f"a PgQueuer consumer ended without draining: {line!r}")
            cpu += float(seconds)
        measure.cost.jobs = count
    cost = measure.cost
    cost.client_cpu_s = cpu  # exact, where sampling the processes would miss their last moments
    db = await asyncpg.connect(url)
    try:
        left = await db.fetchval("SELECT count(*) FROM pgqueuer")
        done = await db.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
    finally:
        await db.close()
    if left or done != count:
        raise RuntimeError(f"PgQueuer left {left} jobs and logged {done} successful of {count}")
    return cost


def _end(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run() -> list[Row]:
    with ExitStack() as stack:
        where = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            python = install(where)
        except (OSError, subprocess.CalledProcessError) as exc:  # no registry
            print(f"peers: cannot install {PGQUEUER}: {exc}", file=sys.stderr)
            return [Row("peers", f"not measured: {PGQUEUER} could not be installed", 0, "")]
        sweep = {setting: drain(python, *setting, SWEEP_COUNT) for setting in SWEEP}
        best = max(sweep, key=lambda setting: sweep[setting].rate)
        peer: list[Cost] = []
        ours: list[Cost] = []
        for n in range(ROUNDS):
            for name in ("peer", "ours")[:: 1 if n % 2 else -1]:  # either first
                if name == "peer":
                    peer.append(drain(python, *best, COUNT))
                else:
                    ours.append(ship(sys.executable, count=COUNT))
    consumers, batch = best
    rows = [
        Row(
            "peers",
            f"PgQueuer 1.6, {consumers} consumers x batch {batch}, {SWEEP_COUNT:,} jobs",
            cost.rate,
            "jobs/s",
        )
        for (consumers, batch), cost in sweep.items()
    ]
    ratio = statistics.median(o.rate / p.rate for o, p in zip(ours, peer, strict=True))
    peer_cost, our_cost = _median(peer), _median(ours)
    rows += [
        Row(
            "peers",
            f"PgQueuer's best ({consumers} consumers x batch {batch}): {COUNT:,} jobs drained",
            peer_cost.rate,
            f"jobs/s (CPU a job: {peer_cost.split})",
        ),
        Row(
            "peers",
            f"orderflow, one instance: {COUNT:,} orders claimed and shipped",
            our_cost.rate,
            f"orders/s (CPU an order: {our_cost.split})",
        ),
        Row("peers", "orderflow / PgQueuer's best", ratio, "x", f"≥ {TARGET}", ratio >= TARGET),
    ]
    return rows


def _median(costs: list[Cost]) -> Cost:
    return sorted(costs, key=lambda c: c.rate)[len(costs) // 2]


if __name__ == "__main__":  # a quick look: `python -m benchmarks.peers CONSUMERS BATCH COUNT`
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        cost = drain(install(Path(folder)), *(int(a) for a in sys.argv[1:4]))
        print(f"{cost.rate:,.0f} jobs/s, CPU a job {cost.split}; {os.cpu_count()} cores")
