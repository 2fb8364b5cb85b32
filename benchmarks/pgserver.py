"""The benchmarks' PostgreSQL: fresh databases on the bench server, and what a drain costs there,
split between the client's processes and PostgreSQL's (CPU, commits, rows, WAL).

PostgreSQL's CPU is read from /proc for its processes that serve the measured database (its
backends, the autovacuum workers visiting it) and for the server's own background processes (WAL
writer, checkpointer, background writer), sampled every few milliseconds while the drain runs, so
that a backend that exits keeps the seconds it had at its last sample. Other databases' backends
on a shared server are left out; the background processes are shared with them, so the database
side is a slight overestimate on a busy server, never an underestimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg

from benchmarks.servers import process_cpu_s

DATABASE_URL = os.environ.get(
    "ORDERFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_SAMPLE_S = 0.05


async def new_database() -> str:
    """The URL of a new, empty database on the bench server."""
    admin = await asyncpg.connect(DATABASE_URL)
    name = f"orderflow_bench_{secrets.token_hex(4)}"
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return DATABASE_URL.rsplit("/", 1)[0] + "/" + name


async def drop_database(url: str) -> None:
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    await admin.close()


@dataclass
class Cost:
    """What a drain of `jobs` cost: seconds of wall time, CPU seconds of the client's processes
    and of PostgreSQL's, and the database's commits, rows written and WAL bytes."""

    jobs: int
    wall_s: float
    client_cpu_s: float
    database_cpu_s: float
    commits: int
    rows_written: int
    wal_bytes: int
    by_kind: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s

    def per_job_us(self, seconds: float) -> float:
        return seconds / self.jobs * 1e6

    @property
    def split(self) -> str:
        """CPU per job, client + database = machine, in µs."""
        client, database = self.per_job_us(self.client_cpu_s), self.per_job_us(self.database_cpu_s)
        return f"{client:.0f} + {database:.0f} = {client + database:.0f} µs"


class _CpuSampler:
    """CPU seconds used since `start` by the processes `client()` names and by PostgreSQL's that
    serve `database` (or none: the server's own), sampled until `stop`."""

    def __init__(
        self,
        db: asyncpg.Connection,
        database: str,
        client: Callable[[], list[int]],
        ignored: int,
    ) -> None:
        self._db = db
        self._ignored = ignored
        self._database = database
        self._client = client
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._client_pids: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self.samples = 0
        self.kinds: dict[int, str] = {}

    async def _pids(self) -> list[int]:
        self.samples += 1
        rows = await self._db.fetch(
            "SELECT pid, backend_type, application_name FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND pid <> $2"
            " AND (datname = $1 OR datname IS NULL)",
            self._database,
            self._ignored,
        )
        for row in rows:
            self.kinds[row["pid"]] = row["backend_type"]
        return [row["pid"] for row in rows]

    async def sample(self, first: bool = False) -> None:
        client = self._client()
        self._client_pids.update(client)
        for pid in [*client, *await self._pids()]:
            seconds = process_cpu_s(pid)
            if seconds is None:
                continue
            self._last[pid] = seconds
            # A process first seen during the drain started during it: all its seconds count.
            self._first.setdefault(pid, seconds if first else 0.0)

    async def start(self) -> None:
        await self.sample(first=True)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_SAMPLE_S)
            await self.sample()

    async def stop(self) -> tuple[float, float]:
        """(client CPU seconds, PostgreSQL CPU seconds) since `start`."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.sample()
        used = {pid: self._last[pid] - self._first[pid] for pid in self._last}
        by_kind: dict[str, float] = {}
        for pid, seconds in used.items():
            if pid not in self._client_pids:
                kind = self.kinds.get(pid, "?")
                by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        self.by_kind = by_kind
        client = sum(s for pid, s in used.items() if pid in self._client_pids)
        return client, sum(s for pid, s in used.items() if pid not in self._client_pids)


class Measure:
    """What `measured` yields: `db`, a connection to the measured database for the block's own
    polling (its statements are not counted), `statements` to count those, and `cost` once the
    block is over (set `jobs` on it)."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self.db = db
        self.statements = 0
        self.cost = Cost(0, 0.0, 0.0, 0.0, 0, 0, 0)

    async def fetchval(self, query: str, *args: object) -> object:
        self.statements += 1
        return await self.db.fetchval(query, *args)


@contextlib.asynccontextmanager
async def measured(url: str, client: Callable[[], list[int]]) -> AsyncIterator[Measure]:
    """Measure what happens in the block on database `url`, the client's processes named by
    `client()` (called at every sample: a process started meanwhile counts from its start)."""
    name = url.rsplit("/", 1)[1]
    db, sampling, polling = [await asyncpg.connect(url) for _ in range(3)]
    measure = Measure(polling)
    try:
        commits, rows = await _database_counters(db, name)
        wal = await db.fetchval("SELECT pg_current_wal_lsn()")
        sampler = _CpuSampler(sampling, name, client, measure.db.get_server_pid())
        loop = asyncio.get_running_loop()
        began = loop.time()
        await sampler.start()
        try:
            yield measure
        except BaseException:
            await sampler.stop()
            raise
        cost = measure.cost
        cost.wall_s = loop.time() - began
        cost.client_cpu_s, cost.database_cpu_s = await sampler.stop()
        cost.by_kind = sampler.by_kind
        cost.wal_bytes = int(await db.fetchval("SELECT pg_current_wal_lsn()")) - int(wal)
        await asyncio.sleep(1.1)  # backends report their counters at most once a second
        commits_after, rows_after = await _database_counters(db, name)
        ours = sampler.samples + measure.statements + 1  # the sampler's and the block's
        cost.commits, cost.rows_written = commits_after - commits - ours, rows_after - rows
    finally:
        for connection in (db, sampling, polling):
            await connection.close()


async def _database_counters(db: asyncpg.Connection, name: str) -> tuple[int, int]:
    """(commits, rows inserted, updated or deleted) in database `name` so far."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    row = await db.fetchrow(
        "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS rows"
        " FROM pg_stat_database WHERE datname = $1",
        name,
    )
    return int(row["xact_commit"]), int(row["rows"])
