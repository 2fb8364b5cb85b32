"""SqliteDatabase: one SQLite file as the stores use it. Writes go to one writer thread that
commits them in groups; reads run on the caller's thread, each on a connection of its own.

Group commit. The writer thread owns the one connection that writes. It takes every write
queued while it was busy, runs them in one transaction (each under a savepoint of its own, so
one that fails leaves nothing of itself behind and the rest go on), commits once (with
``synchronous=FULL``, the commit is on the disk when COMMIT returns), and only then answers
each caller, on the caller's own event loop. Concurrent writes thus share one fsync, and
neither the commit nor its fsync ever runs on an event loop. A commit that fails (the disk is
full, an I/O error) fails every write of its group, with nothing of the group applied, and the
database is in an outage (`outage`, and `ping` fails) until a commit succeeds again.

Reads run where they are asked, on a connection each thread opens once: with WAL, readers see
the last commit and never wait for the writer, and a point read costs microseconds, less than
a trip to another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from orderflow.errors import OrderflowError, OutcomeUnknown, StoreUnavailable
from orderflow.supervise import StoreOutage

log = logging.getLogger("orderflow.store.sqlite")

T = TypeVar("T")
Connect = Callable[[bool], Any]  # writing → a new connection, pragmas set
Translate = Callable[[BaseException], BaseException]  # ours, or the bug as it is
MAX_GROUP = 2000  # writes one transaction takes at most
KILL_AT = "ORDERFLOW_TEST_KILL_AT"


class Change:
    """What one write sees: the writing connection (`db`), and what it leaves for the group:
    `deltas` to counters (flushed once per group, before the commit), whether it appended
    events (`notify`: the listener hears of them after the commit)."""

    __slots__ = ("db", "deltas", "notify")

    def __init__(self, db: Any) -> None:
        self.db = db
        self.deltas: Counter[tuple[str, str]] = Counter()
        self.notify = False


class _Write(Generic[T]):
    __slots__ = ("body", "error", "future", "kind", "loop", "result")

    def __init__(
        self,
        body: Callable[[Change], T],
        kind: str,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        self.body = body
        self.kind = kind
        self.loop = loop
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


class KillHook:
    """A test hook, and nothing else: with ``ORDERFLOW_TEST_KILL_AT=commit:KIND:N`` in its
    environment, the process SIGKILLs itself right after the Nth commit of a group holding a
    write of that kind (``add``, ``claim``, ``outcome``, ``settle``, …), before anyone hears
    of it: a crash placed where a test wants it. Any other value refuses to start."""

    def __init__(self, kind: str, count: int) -> None:
        self.kind = kind
        self.left = count

    @classmethod
    def from_environ(cls) -> KillHook | None:
        value = os.environ.get(KILL_AT)
        if not value:
            return None
        point, _, rest = value.partition(":")
        kind, _, count = rest.partition(":")
        if point != "commit" or not kind or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{KILL_AT}={value!r}: expected commit:KIND:N (a test hook)")
        log.warning("test hook %s=%s: this process kills itself there", KILL_AT, value)
        return cls(kind, int(count))

    def committed(self, kinds: set[str]) -> None:
        if self.kind in kinds:
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), signal.SIGKILL)


class SqliteDatabase:
    """Args:
    connect: opens a connection to the file (True: the writing one).
    translate: turns what the driver raised into our error (StoreUnavailable: the group
        fails; anything else fails that write alone).
    flush: writes a group's counter deltas, before its commit.
    """

    def __init__(
        self,
        connect: Connect,
        translate: Translate,
        *,
        flush: Callable[[Any, Counter[tuple[str, str]]], None] | None = None,
        kill: KillHook | None = None,
    ) -> None:
        self._connect = connect
        self._translate = translate
        self._flush = flush
        self._kill = kill
        self.outage = StoreOutage(log, "the database file")
        #: Called (from the writer thread) after a commit of writes that appended events.
        self.listener: Callable[[], None] | None = None
        self._queue: queue.SimpleQueue[_Write[Any] | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._writer_db = connect(True)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="orderflow-sqlite-writer")
        self._thread.start()

    # -- writing -----------------------------------------------------------------------------

    async def write(self, body: Callable[[Change], T], kind: str) -> T:
        """Run `body` in the writer thread, within the next group's transaction; its result
        once the group committed. Raises what `body` raised (translated), or StoreUnavailable
        (OutcomeUnknown: the commit failed in a way that may have reached the disk)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Write(body, kind, loop, future))
        return await future

    def _run(self) -> None:
        db = self._writer_db
        try:
            while (first := self._queue.get()) is not None:
                group = [first]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    group.append(more)
                self._commit(db, group)
                if stop:
                    break
        finally:
            with contextlib.suppress(Exception):
                db.close()

    def _commit(self, db: Any, group: list[_Write[Any]]) -> None:
        deltas: Counter[tuple[str, str]] = Counter()
        notify = False
        try:
            db.execute("BEGIN IMMEDIATE")
            for write in group:
                change = Change(db)
                db.execute("SAVEPOINT w")
                try:
                    write.result = write.body(change)
                except Exception as exc:
                    error = self._translate(exc)
                    if isinstance(error, StoreUnavailable):
                        raise error from exc
                    write.error = error
                    db.execute("ROLLBACK TO w")
                    db.execute("RELEASE w")
                    continue
                db.execute("RELEASE w")
                deltas.update(change.deltas)
                notify = notify or change.notify
            if self._flush is not None and deltas:
                self._flush(db, deltas)
        except Exception as exc:
            failed = exc if isinstance(exc, StoreUnavailable) else self._translate(exc)
            self._roll_back(db)
            self._fail(group, failed)
            return
        try:
            db.execute("COMMIT")
        except Exception as exc:
            failed = self._translate(exc)
            if "IOERR" in str(getattr(exc, "sqlite_errorname", "")):
                failed = OutcomeUnknown(f"the database file failed to commit: {exc}")
            self._roll_back(db)
            self._fail(group, failed)
            return
        if self.outage.since is not None:
            self.outage.ended()
        if self._kill is not None:
            self._kill.committed({write.kind for write in group})
        if notify and self.listener is not None:
            self.listener()
        self._answer(group)

    def _roll_back(self, db: Any) -> None:
        with contextlib.suppress(Exception):
            if db.in_transaction:
                db.execute("ROLLBACK")

    def _fail(self, group: list[_Write[Any]], error: BaseException) -> None:
        self.outage.began(error)
        for write in group:
            write.error = error
        self._answer(group)

    def _answer(self, group: list[_Write[Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Write[Any]]] = {}
        for write in group:
            by_loop.setdefault(write.loop, []).append(write)
        for loop, writes in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, writes)

    # -- reading -----------------------------------------------------------------------------

    def read(self, body: Callable[[Any], T]) -> T:
        """`body` run on this thread's reading connection (opened on first use), its errors
        translated; within one read transaction, so it sees one commit throughout."""
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            try:
                db = self._connect(False)
            except Exception as exc:
                raise self._outage(exc) from exc  # the driver's: never a bug of ours
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        try:
            db.execute("BEGIN")
            try:
                return body(db)
            finally:
                db.execute("COMMIT")
        except OrderflowError:
            raise
        except Exception as exc:
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
            error = self._outage(exc)
            if error is exc:
                raise
            raise error from exc

    def _outage(self, exc: BaseException) -> BaseException:
        error = self._translate(exc)
        if isinstance(error, StoreUnavailable):
            self.outage.began(error)
        return error

    async def ping(self) -> None:
        """Return once the file answers: in an outage, once a commit succeeds again."""
        if self.outage.since is None:
            self.read(lambda db: db.execute("SELECT 1").fetchone())
            return
        await self.write(
            lambda change: change.db.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'ping'"
            ),
            "ping",
        )

    def close(self) -> None:
        """Let the writer finish what is queued, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        with self._readers_lock:
            for db in self._readers:
                with contextlib.suppress(Exception):
                    db.close()
            self._readers.clear()


def _settle(writes: list[_Write[Any]]) -> None:
    for write in writes:
        future = write.future
        if future.done():  # its caller was cancelled; the change stands all the same
            continue
        if write.error is not None:
            future.set_exception(write.error)
        else:
            future.set_result(write.result)
