"""What claim-and-ship costs on PostgreSQL, per order: `python -m benchmarks.profile_postgres
[COUNT] [--profile]` fills a fresh database with COUNT pending orders, runs the service in this
process on it as `orderflow serve --ship-delay 0` does, triggers, and prints, per order shipped:
the statements the store sent (by name, from `store/postgres_sql.py`) and their round trips,
the rows each table had inserted, updated (HOT or not) and deleted, the index entries written,
the commits and the WAL; with `--profile`, the functions that took the most of this process's
time under cProfile. Not a part of `make bench`; a tool for finding what to cut."""

from __future__ import annotations

import asyncio
import collections
import cProfile
import os
import pstats
import sys
import time
from typing import Any

import asyncpg

from benchmarks.pgserver import drop_database, measured, new_database
from benchmarks.postgres import fill
from orderflow.server import run, settle_gc
from orderflow.settings import Settings
from orderflow.store import postgres_sql

_NAMES = {
    value: name
    for name, value in vars(postgres_sql).items()
    if name.isupper() and isinstance(value, str)
}
_TABLES = "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables"
_INDEXES = "SELECT relname, indexrelname, idx_tup_read FROM pg_stat_user_indexes"
_COUNTERS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"


def _counting(counts: collections.Counter[str], waits: collections.Counter[str]) -> None:
    """Count every statement a connection sends, by the name it has in postgres_sql, and the
    time from sending it to its answer (`waits`, seconds)."""
    connection = asyncpg.connection.Connection
    for method in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
        original = getattr(connection, method)

        async def counted(
            self: Any, query: str, *args: Any, _original: Any = original, **kw: Any
        ) -> Any:
            name = _NAMES.get(query, query[:60])
            counts[name] += 1
            began = time.perf_counter()
            try:
                return await _original(self, query, *args, **kw)
            finally:
                waits[name] += time.perf_counter() - began

        setattr(connection, method, counted)


async def _snapshot(url: str) -> dict[str, Any]:
    db = await asyncpg.connect(url)
    try:
        await db.execute("SELECT pg_stat_force_next_flush()")
        await asyncio.sleep(1.1)  # what backends have not reported yet
        tables = {row["relname"]: tuple(row)[1:] for row in await db.fetch(_TABLES)}
        return {
            "tables": tables,
            "commits": await db.fetchval(_COUNTERS),
            "wal": await db.fetchval("SELECT pg_current_wal_lsn()"),
        }
    finally:
        await db.close()


async def ship(url: str, count: int, profile: cProfile.Profile | None) -> float:
    """CPU seconds of this process from the trigger to the last of `count` orders shipped."""
    from orderflow.runtime import Runtime

    runtime = Runtime(Settings(ship_delay=0.0, shutdown_grace=0.0, database_url=url, migrate=False))
    await runtime.start()
    settle_gc()
    poll = await asyncpg.connect(url)
    began, cpu = time.monotonic(), time.process_time()
    if profile is not None:
        profile.enable()
    await runtime.service.trigger_processing()
    for _ in range(1_000_000):  # bounded
        shipped = await poll.fetchval(
            "SELECT coalesce(sum(count), 0) FROM status_counts WHERE status = 'shipped'"
        )
        if shipped == count or began + 600 < time.monotonic():
            break
        await asyncio.sleep(0.05)
    if profile is not None:
        profile.disable()
    cpu = time.process_time() - cpu
    await poll.close()
    await runtime.stop()
    return cpu


async def measure(count: int, profile: cProfile.Profile | None) -> None:
    url = await new_database()
    try:
        await asyncio.to_thread(fill, url, count, sys.executable)
        counts: collections.Counter[str] = collections.Counter()
        waits: collections.Counter[str] = collections.Counter()
        before = await _snapshot(url)
        _counting(counts, waits)
        async with measured(url, lambda: [os.getpid()]) as measure:
            await ship(url, count, profile)
            measure.cost.jobs = count
        cost = measure.cost
        after = await _snapshot(url)
        print(f"{count:,} orders in {cost.wall_s:.2f} s: {cost.rate:,.0f}/s; CPU an order,"
              f" this process + PostgreSQL: {cost.split}")  # fmt: skip
        for kind, seconds in sorted(cost.by_kind.items(), key=lambda kv: -kv[1]):
            print(f"  PostgreSQL, {kind}: {cost.per_job_us(seconds):.1f} µs an order")
        print("\nstatements per 1,000 orders (each one round trip), and µs from each sent to its"
              " answer, on average and per order:")  # fmt: skip
        total = 0
        for name, n in counts.most_common():
            if name.startswith("SELECT coalesce(sum(count)"):
                continue
            total += n
            print(f"  {n / count * 1000:9.2f} {waits[name] / n * 1e6:9.0f}"
                  f" {waits[name] / count * 1e6:7.1f}  {name}")  # fmt: skip
        print(f"  {total / count * 1000:9.2f}  in all")
        print("\nrows per order: inserted, updated (of which HOT), deleted")
        for table, now in sorted(after["tables"].items()):
            then = before["tables"].get(table, (0, 0, 0, 0))
            ins, upd, hot, dele = (a - b for a, b in zip(now, then, strict=True))
            if ins or upd or dele:
                print(f"  {table:20s} {ins / count:6.2f} {upd / count:6.2f} ({hot / count:.2f})"
                      f" {dele / count:6.2f}")  # fmt: skip
        commits = after["commits"] - before["commits"]
        wal = int(after["wal"]) - int(before["wal"])
        print(
            f"\ncommits per order: {commits / count:.3f}; WAL per order: {wal / count:,.0f} bytes"
        )
    finally:
        await drop_database(url)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    count = int(args[0]) if args else 50_000
    profile = cProfile.Profile() if "--profile" in sys.argv else None
    run(measure(count, profile))
    if profile is not None:
        pstats.Stats(profile).strip_dirs().sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
