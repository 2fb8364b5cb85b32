"""SqliteOrderStore: orders in one SQLite file, durable on one machine; the only module that
imports the driver (the standard library's sqlite3).

One process owns the file (`sqlite_file.FileLock`): the store is not shared. Writes go through
one writer thread that commits concurrent writes together (`sqlite_db`): an answer that reports
a change is given once the change is committed, and synced to the disk with
``synchronous=FULL`` (the default; ``?synchronous=normal`` survives a crash of the process but
may lose the last commits on power loss). Reads run on the caller's thread.

At open, before anything else is written: the file is checked to be ours, of a schema we know,
and sound (`PRAGMA quick_check`), then migrated. Whatever the last run held when it ended
without a clean stop is taken back: every processing order is made ready again, with a history
entry saying so ("rescued at start"), and ships without another trigger (at least once, for a
shipment that was in flight); every webhook claim is released.

Errors leave as ours: a duplicate id as OrderConflict; a value the driver cannot bind as
StoreRefusedData; anything else from SQLite (the disk is full, an I/O error, a damaged file) as
StoreUnavailable, and a commit that failed in a way that may have reached the disk as
OutcomeUnknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from orderflow.clock import Clock, SystemClock
from orderflow.domain import (
    Event,
    Held,
    Hold,
    Order,
    OrderEvent,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    Page,
    Stats,
    order_id_floor,
    prefix_bounds,
    reversed_id,
)
from orderflow.errors import (
    OrderConflict,
    OrderflowError,
    StoreRefusedData,
    StoreUnavailable,
)
from orderflow.metrics import METRICS
from orderflow.store import sqlite_changes as changes
from orderflow.store import sqlite_sql as sql
from orderflow.store.base import (
    IdempotencyRecord,
    Instance,
    InstanceBeat,
    JsonPage,
    MinuteCounts,
    OrderStore,
)
from orderflow.store.memory_rows import order_of, render, render_many, row_of
from orderflow.store.sqlite_db import KillHook, SqliteDatabase
from orderflow.store.sqlite_events import SqliteCounts, SqliteEventLog
from orderflow.store.sqlite_file import (
    FileLock,
    SqliteUrl,
    check_identity,
    create_private,
    migrate,
    newest_version,
)
from orderflow.store.sqlite_history import SqliteHistory

log = logging.getLogger("orderflow.store.sqlite")

_BATCH = 10_000  # orders one transaction releases or rescues, keys one prunes
SEARCH_BOUND = 10_000  # matches of a customer prefix past which a search walks the time order
_row = changes.row_of
_ADD_MANY: Any = changes.add_many


class SqliteOrderStore(OrderStore):
    """Use `open`. `database` is shared with the webhook store of the same file; `path` is
    the file's absolute path. `search_bound`: see `list_statement`."""

    shared = False

    def __init__(
        self,
        database: SqliteDatabase,
        path: Path,
        lock: FileLock,
        tokens: changes.Tokens,
        *,
        search_bound: int = SEARCH_BOUND,
    ) -> None:
        if search_bound < 1:
            raise ValueError(f"search_bound must be at least 1, not {search_bound}")
        self.database = database
        self.path = path
        self.search_bound = search_bound
        self.outage = database.outage
        self._lock = lock
        self._tokens = tokens
        self._events = SqliteEventLog(database)
        self._counts = SqliteCounts(database)
        self._history = SqliteHistory(database)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        apply_migrations: bool = True,
        clock: Clock | None = None,
        search_bound: int = SEARCH_BOUND,
    ) -> SqliteOrderStore:
        """The store of the file `url` names (created if missing, mode 0600), checked,
        migrated unless told not to, and what the last run held taken back. `search_bound`:
        see `list_statement`.

        Raises:
            ValueError: the URL is malformed.
            StoreUnavailable: the file cannot be used (another process holds it, it is not an
                orderflow database or from a newer one, it is damaged); the message names it.
        """
        target = SqliteUrl(url)
        kill = KillHook.from_environ()
        path = target.path
        create_private(path)
        lock = FileLock(path)
        try:
            await asyncio.to_thread(_prepare, path, target.synchronous, apply_migrations)
            database = SqliteDatabase(
                lambda writing: _connect(path, target.synchronous, writing=writing),
                _translate,
                flush=changes.flush,
                kill=kill,
            )
        except BaseException:
            lock.release()
            raise
        tokens = changes.Tokens(database.read(lambda db: db.execute(sql.TOKEN).fetchone()[0]))
        store = cls(database, path, lock, tokens, search_bound=search_bound)
        try:
            await store._take_back((clock or SystemClock()).now())
        except BaseException:
            await store.close()
            raise
        return store

    async def _take_back(self, at: datetime) -> None:
        """What a run that ended without a clean stop held: nobody holds it now."""
        after, rescued = "", 0
        while True:
            rescue = functools.partial(changes.rescue_processing, at=at, after=after, limit=_BATCH)
            ids = await self.database.write(rescue, "rescue")
            rescued += len(ids)
            if len(ids) < _BATCH:
                break
            after = ids[-1]
        if rescued:
            log.warning("rescued %d orders left processing by the last run: they ship again",
                        rescued)  # fmt: skip
        released = changes.micros(at)
        await self.database.write(
            lambda c: c.db.execute(sql.RELEASE_WEBHOOK_CLAIMS, (released,)), "rescue"
        )

    def synchronous(self) -> str:
        """The synchronous setting of the writing connection, as SQLite reports it there
        (full or normal)."""
        return _SYNCHRONOUS[self.database.on_writer(sql.SYNCHRONOUS_OF)]

    def journal_mode(self) -> str:
        """The journal mode of the writing connection, as SQLite reports it there (wal)."""
        return str(self.database.on_writer(sql.JOURNAL_MODE))

    async def ping(self) -> None:
        await self.database.ping()

    # -- orders ------------------------------------------------------------------------------

    async def add(
        self, order: Order, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        row = row_of(order)
        return await self.database.write(
            lambda c: changes.add(c, order, row, idempotency),
            "add",
            many=_ADD_MANY if idempotency is None else None,
            item=(order, row),
        )

    def _row(self, order_id: str) -> Any:
        return self.database.read(lambda db: db.execute(sql.FIND_ROW, (order_id,)).fetchone())

    async def find_order(self, order_id: str) -> Order | None:
        found = self._row(order_id)
        return None if found is None else order_of(_row(*found))

    async def find_order_json(self, order_id: str) -> bytes | None:
        found = self._row(order_id)
        return None if found is None else render(_row(*found))

    def _page(self, query: OrderQuery) -> tuple[list[Any], str | None]:
        walk = self.search_bound

        def body(db: sqlite3.Connection) -> tuple[list[Any], str | None]:
            dense = False
            if query.customer is not None and query.id_tail is None:
                bounds = prefix_bounds(query.customer)
                counted = sql.search_count(len(bounds))
                dense = db.execute(counted, (*bounds, walk)).fetchone()[0] >= walk
            statement, args = self.list_statement(query, walk=walk if dense else None)
            rows = db.execute(statement, args).fetchall()
            if len(rows) > query.limit:
                del rows[query.limit :]
                return rows, rows[-1][4]
            if not dense:
                return rows, None
            # Fewer matches than the page holds: the walk ended with the range, or it read as
            # many orders as it may, and the next page goes on after the last one it read.
            ended, ended_args = self.walk_end_statement(query, walk)
            last = db.execute(ended, ended_args).fetchone()
            return rows, None if last is None else last[0]

        return self.database.read(body)

    @staticmethod
    def _range(query: OrderQuery) -> tuple[bool, list[Any]]:
        """Whether the cursor is excluded, and the arguments of the id range (the status's
        first): after the cursor, or before it newest first."""
        low = "" if query.start is None else order_id_floor(query.start)
        high = sql.ABOVE_ALL_IDS if query.end is None else order_id_floor(query.end)
        cursor = query.cursor
        after = False
        if query.newest:
            if cursor is not None and cursor < high:
                high = cursor
        else:
            after = cursor is not None and cursor >= low
            if after:
                assert cursor is not None
                low = cursor
        args: list[Any] = [] if query.status is None else [query.status.value]
        return after, [*args, low, high]

    @classmethod
    def list_statement(
        cls, query: OrderQuery, *, walk: int | None = None
    ) -> tuple[str, tuple[Any, ...]]:
        """The listing's statement and its arguments. A customer prefix is read one of two
        ways. One that matches fewer orders than the store's `search_bound` (counted through
        orders_customer, at most that many entries read) is read through that index and its
        matches sorted (fewer than the bound). A dense one (given `walk`, the bound) walks
        the time order from the cursor, at most `walk` orders, filtering by the key: a page
        ends at `limit` matches or after `walk` orders, whichever comes first (then with
        fewer than `limit` orders and a cursor, as the contract allows; see `walk_end`). With
        the matches spread over time (at least bound of N orders), a page is found within
        about limit * N / bound orders, the same page the index answers."""
        after, args = cls._range(query)
        if walk is not None:
            args.append(walk)
        customer: tuple[str, ...] = () if query.customer is None else prefix_bounds(query.customer)
        tail: tuple[str, ...] = (
            () if query.id_tail is None else prefix_bounds(reversed_id(query.id_tail))
        )
        args += (*customer, *tail, query.limit + 1)
        statement = sql.listing(
            query.status is not None,
            after,
            query.newest,
            len(customer),
            len(tail),
            walk is not None,
        )
        return statement, tuple(args)

    @classmethod
    def walk_end_statement(cls, query: OrderQuery, walk: int) -> tuple[str, tuple[Any, ...]]:
        """The statement that finds the last order a dense search's walk read, if it read
        `walk` of them, and its arguments."""
        after, args = cls._range(query)
        statement = sql.walk_end(query.status is not None, after, query.newest)
        return statement, (*args, walk - 1)

    async def list_orders(self, query: OrderQuery) -> Page:
        rows, next_cursor = self._page(query)
        return Page([order_of(_row(*row[:4])) for row in rows], next_cursor)

    async def list_orders_json(self, query: OrderQuery) -> JsonPage:
        rows, next_cursor = self._page(query)
        joined = render_many(_row(*row[:4]) for row in rows)
        return JsonPage(msgspec.Raw(joined), len(rows), next_cursor)

    async def delete_pending(self, order_id: str, at: datetime) -> None:
        await self.database.write(lambda c: changes.delete_pending(c, order_id, at), "delete")

    async def transition(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None = None,
        *,
        hold: Hold | None = None,
    ) -> Order:
        return await self.database.write(
            lambda c: changes.transition(c, order_id, event, at, reason, hold), "transition"
        )

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        return await self.database.write(
            lambda c: changes.write_outcomes(c, owner, outcomes), "outcome"
        )

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        below = sql.ABOVE_ALL_IDS if created_before is None else order_id_floor(created_before)
        return await self.database.write(
            lambda c: changes.claim_pending(c, at, limit, below), "claim"
        )

    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        # One process holds the file: no lease runs out while it lives, and at the next start
        # whatever it held is rescued. The lease is not kept.
        return await self.database.write(
            lambda c: changes.acquire(c, self._tokens, owner, limit), "acquire"
        )

    async def renew(
        self, owner: str, holds: Mapping[str, int], lease_s: float, at: datetime
    ) -> set[str]:
        return await self.database.write(lambda c: changes.renew(c, owner, holds, at), "renew")

    async def retire(self, owner: str, at: datetime) -> int:
        return await self.database.write(lambda c: changes.retire(c, owner, at), "retire")

    async def release_unshared(self, at: datetime, reason: str) -> int:
        released = 0
        while True:  # in batches: a transaction never holds the writer for long
            count = await self.database.write(
                lambda c: changes.release_ready(c, at, reason, _BATCH), "release"
            )
            released += count
            if count < _BATCH:
                return released

    # -- operators ---------------------------------------------------------------------------

    async def count_by_status(self) -> dict[OrderStatus, int]:
        return self._counts.by_status()

    async def oldest_pending(self) -> datetime | None:
        return self._counts.oldest_pending()

    async def stats(self, top: int = 20) -> Stats:
        return self._counts.stats(top)

    async def transition_matching(
        self,
        event: Event,
        source: OrderStatus,
        where: OrderFilter,
        at: datetime,
        reason: str | None,
        *,
        limit: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> tuple[list[str], str | None]:
        return await self.database.write(
            lambda c: changes.transition_matching(
                c, event, source, where, at, reason, limit, after, dry_run=dry_run
            ),
            "bulk",
        )

    # -- history and instances --------------------------------------------------------------

    async def order_minutes(self, since: datetime) -> list[MinuteCounts]:
        return self._history.order_minutes(since)

    async def prune_minutes(self, before: datetime) -> int:
        return await self._history.prune_minutes(before)

    async def heartbeat(self, beat: InstanceBeat) -> None:
        await self._history.heartbeat(beat)

    async def stop_instance(self, name: str, at: datetime) -> None:
        await self._history.stop_instance(name, at)

    async def list_instances(self, at: datetime) -> list[Instance]:
        return self._history.list_instances(at)

    async def prune_instances(self, before: datetime) -> int:
        return await self._history.prune_instances(before)

    # -- idempotency keys --------------------------------------------------------------------

    async def find_idempotency(self, key: str) -> IdempotencyRecord | None:
        found = self.database.read(lambda db: db.execute(sql.FIND_KEY, (key,)).fetchone())
        return None if found is None else changes.record_of(found)

    async def prune_idempotency(self, created_before: datetime) -> int:
        pruned = 0
        while True:
            count = await self.database.write(
                lambda c: changes.prune_idempotency(c, created_before, _BATCH), "prune"
            )
            pruned += count
            if count < _BATCH:
                return pruned

    # -- the event log -----------------------------------------------------------------------

    async def read_events(self, after: int, limit: int) -> list[OrderEvent]:
        return self._events.read(after, limit)

    async def last_event_seq(self) -> int:
        return self._events.last_seq()

    async def prune_events(self, before: datetime, keep: int, limit: int = 10_000) -> int:
        return await self._events.prune(before, keep, limit)

    def watch_events(self, on_events: Callable[[], None]) -> None:
        self._events.watch(on_events)

    async def close(self) -> None:
        # The writer may be in a commit: wait for it off the loop. The lock goes last (see
        # sqlite_file: closing a descriptor of the file drops the POSIX locks on it).
        await asyncio.to_thread(self.database.close)
        self._lock.release()

    # -- a self-check, for tests -------------------------------------------------------------

    def check_invariants(self) -> Iterable[str]:
        """Every disagreement between the orders, the counts and the holds (a scan, for
        tests); empty when sound."""

        def body(db: Any) -> tuple[dict[str, int], dict[str, int], int]:
            recount = dict(db.execute("SELECT status, count(*) FROM orders GROUP BY 1"))
            failed = dict(
                db.execute(
                    "SELECT coalesce(reason, ''), count(*) FROM orders"
                    " WHERE status = 'failed' GROUP BY 1"
                )
            )
            wrongly_held = db.execute(
                "SELECT count(*) FROM orders WHERE owner IS NOT NULL AND status != 'processing'"
            ).fetchone()[0]
            return recount, failed, wrongly_held

        recount, failed, wrongly_held = self.database.read(body)
        counts = self._counts.by_status()
        if {s: recount.get(s.value, 0) for s in OrderStatus} != counts:
            yield "counts and orders disagree"
        reasons = {r.reason: r.count for r in self._counts.stats(1_000_000).failed_reasons}
        if reasons != failed:
            yield "failure reasons and orders disagree"
        if wrongly_held:
            yield "an order that is not processing is held"

    def __len__(self) -> int:
        return int(
            self.database.read(lambda db: db.execute("SELECT count(*) FROM orders").fetchone()[0])
        )


_SYNCHRONOUS = {2: "full", 1: "normal", 0: "off", 3: "extra"}


def _connect(path: Path, synchronous: str, *, writing: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=512)
    for pragma in sql.WRITER_PRAGMAS if writing else sql.READER_PRAGMAS:
        db.execute(pragma.format(synchronous=synchronous))
    return db


def _prepare(path: Path, synchronous: str, apply_migrations: bool) -> list[str]:
    """Check the file (read-only: nothing is written to a file that is not ours), then
    migrate it; returns the migrations applied. Raises StoreUnavailable naming the file."""
    try:
        reader = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        try:
            version = check_identity(reader, path)
            if version:
                problem = reader.execute(sql.QUICK_CHECK).fetchone()[0]
                if problem != "ok":
                    problem = " ".join(problem.replace("*** in database main ***", "").split())
                    raise StoreUnavailable(f"{path} is damaged ({problem}); restore a backup")
        finally:
            reader.close()
        if version < newest_version() and not apply_migrations:
            raise StoreUnavailable(
                f"{path} needs migrations (schema {version} of {newest_version()}):"
                " run orderflow db migrate, or start without --no-migrate"
            )
        writer = _connect(path, synchronous, writing=True)
        try:
            applied = migrate(writer, version)
            mode = writer.execute(sql.JOURNAL_MODE).fetchone()[0]
        finally:
            writer.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{path} cannot be used: {_why(exc)}") from exc
    if mode != "wal":
        raise StoreUnavailable(f"{path}: SQLite cannot keep a write-ahead log there ({mode})")
    for name in applied:
        log.info("applied migration %s to %s", name, path)
    return applied


def _why(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return f"it is not an orderflow database, or it is damaged ({exc})"
    return str(exc)


def _translate(exc: BaseException) -> BaseException:
    """The driver's errors as ours (see the module docstring); ours and bugs as they are."""
    if isinstance(exc, OrderflowError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return OrderConflict(f"an order with that id exists ({exc})")
    if isinstance(exc, (sqlite3.InterfaceError, sqlite3.DataError, OverflowError, UnicodeError)):
        METRICS.store_errors["refused_data"] += 1
        return StoreRefusedData(f"the database refused a value: {type(exc).__name__}: {exc}")
    if isinstance(exc, sqlite3.Error):
        METRICS.store_errors["unavailable"] += 1
        return StoreUnavailable(f"the database file failed: {exc}")
    return exc


async def migrate_file(url: str) -> list[str]:
    """Apply the migrations a SQLite file lacks (`orderflow db migrate`); refused while a
    server holds the file. Returns the names applied."""
    target = SqliteUrl(url)
    create_private(target.path)
    try:
        lock = FileLock(target.path)
    except StoreUnavailable as exc:
        raise StoreUnavailable(
            f"{target.path} is in use by a running orderflow: stop it first (a server applies"
            " the migrations at start)"
        ) from exc
    try:
        return await asyncio.to_thread(_prepare, target.path, target.synchronous, True)
    finally:
        lock.release()


def backup_file(url: str, destination: Path) -> None:
    """Copy the SQLite file `url` names to `destination` (a new file, mode 0600), online: a
    consistent copy of its last commit, while a server may be writing. Raises StoreUnavailable
    (or FileExistsError)."""
    source_path = SqliteUrl(url).path
    if not source_path.exists():
        raise StoreUnavailable(f"{source_path} does not exist")
    if destination.exists():
        raise FileExistsError(f"{destination} exists: back up to a new file")
    partial = destination.with_name(destination.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    create_private(partial)
    try:
        source = sqlite3.connect(f"file:{quote(str(source_path))}?mode=ro", uri=True)
        try:
            check_identity(source, source_path)
            target = sqlite3.connect(partial, isolation_level=None)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                target.close()
        finally:
            source.close()
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        partial.rename(destination)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise StoreUnavailable(f"{source_path} cannot be copied: {_why(exc)}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
