"""SqliteDatabase: one SQLite file as the stores use it. Writes are made in groups, each
committed by a thread of its own; reads run on the caller's thread, each on a connection of
its own.

Group commit. The writes a round of the event loop makes wait for the connection that writes
to be free. Then one of the loops runs all that are waiting in one transaction: the statements
run there (a few microseconds each, like the in-memory store's work, and never a wait for
another thread), and the commit goes to the committer thread, which runs COMMIT (with
``synchronous=FULL``, the commit is on the disk when COMMIT returns) and only then answers each
write, on its own event loop. Meanwhile new writes gather for the next group: concurrent writes
share one fsync, and neither a commit nor its fsync ever runs on an event loop. A commit that
fails (the disk is full, an I/O error) fails every write of its group, with nothing of the group
applied, and the database is in an outage (`outage`, and `ping` fails) until a commit succeeds
again.

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
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from orderflow.errors import OrderflowError, OutcomeUnknown, StoreUnavailable
from orderflow.supervise import StoreOutage

log = logging.getLogger("orderflow.store.sqlite")

T = TypeVar("T")
Connect = Callable[[bool], Any]  # writing → a new connection, pragmas set
Translate = Callable[[BaseException], BaseException]  # ours, or the bug as it is
MAX_GROUP = 500  # writes one group takes at most (its statements run on an event loop)
KILL_AT = "ORDERFLOW_TEST_KILL_AT"


class Change:
    """What the writes of a group see: the writing connection (`db`), and what they leave:
    `deltas` to counters (flushed once, before the commit), whether they appended events
    (`notify`: the listener hears of them after the commit)."""

    __slots__ = ("db", "deltas", "notify")

    def __init__(self, db: Any) -> None:
        self.db = db
        self.deltas: Counter[tuple[str, str | int]] = Counter()
        self.notify = False


class _Write(Generic[T]):
    __slots__ = ("body", "error", "future", "item", "kind", "loop", "many", "result")

    def __init__(
        self,
        body: Callable[[Change], T],
        kind: str,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
        many: Callable[[Change, list[Any]], list[T]] | None,
        item: Any,
    ) -> None:
        self.body = body
        self.kind = kind
        self.loop = loop
        self.future = future
        self.many = many
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None


class _Careful(Exception):
    """A write raised what may have left part of it behind: the group is run again, each
    write under a savepoint."""


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
        flush: Callable[[Any, Counter[tuple[str, str | int]]], None] | None = None,
        kill: KillHook | None = None,
    ) -> None:
        self._connect = connect
        self._translate = translate
        self._flush = flush
        self._kill = kill
        self.outage = StoreOutage(log, "the database file")
        #: Called (from the committer thread) after a commit of writes that appended events.
        self.listener: Callable[[], None] | None = None
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._writer_db = connect(True)
        # Under _mutex: the writes waiting for the next group, whether the writing connection
        # is taken (a group is being written or committed), whether a loop will run a group.
        self._mutex = threading.Lock()
        self._waiting: list[_Write[Any]] = []
        self._taken = False
        self._called = False
        self._closed = False
        #: Groups committed, and writes in them (group commit: many writes, one commit).
        self.commits = 0
        self.committed_writes = 0
        self._commits: queue.SimpleQueue[tuple[list[_Write[Any]], Change] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._commit_groups, name="orderflow-committer")
        self._thread.start()

    # -- writing -----------------------------------------------------------------------------

    async def write(
        self,
        body: Callable[[Change], T],
        kind: str,
        *,
        many: Callable[[Change, list[Any]], list[T]] | None = None,
        item: Any = None,
    ) -> T:
        """Run `body` within the next group's transaction; its result once the group
        committed. Raises what `body` raised (translated), or StoreUnavailable (OutcomeUnknown:
        the commit failed in a way that may have reached the disk).

        `body` may raise one of ours (OrderflowError) only before its first write: it is then
        taken to have written nothing. Anything else it raises has the group run again with a
        savepoint for each write. With `many`, writes that follow one another with the same
        `many` are made in one call, `many(change, [item, …])`, one result per item (one
        multi-row statement costs one trip into SQLite where each row would cost one); should
        it raise, each is made alone, by its `body`."""
        # asyncio.get_running_loop() makes a system call (getpid) each time, and system calls
        # are dear here: this thread's running loop is remembered.
        loop = getattr(self._local, "loop", None)
        if loop is None or not loop.is_running():
            loop = self._local.loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        write = _Write(body, kind, loop, future, many, item)
        with self._mutex:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            self._waiting.append(write)
            call = not (self._taken or self._called)
            self._called = self._called or call
        if call:  # at the end of this round: the round's other writes join the group
            loop.call_soon(self._write_group)
        return await future

    def _write_group(self) -> None:
        """Write what waits, as one group, here (a loop's thread); its commit goes to the
        committer thread."""
        with self._mutex:
            self._called = False
            if self._taken or not self._waiting:
                return
            self._taken = True
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
        db = self._writer_db
        change = Change(db)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._apply(change, group)
            except _Careful:
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                change = Change(db)
                self._apply_carefully(change, group)
            if self._flush is not None and change.deltas:
                self._flush(db, change.deltas)
        except Exception as exc:
            failed = exc if isinstance(exc, StoreUnavailable) else self._translate(exc)
            self._roll_back(db)
            self._fail(group, failed)
            self._release()
            return
        self._commits.put((group, change))

    def _release(self) -> None:
        """The writing connection is free: the writes that gathered meanwhile go next, on the
        loop of the oldest of them."""
        with self._mutex:
            self._taken = False
            if not self._waiting or self._called:
                return
            self._called = True
            loop = self._waiting[0].loop
        try:
            loop.call_soon_threadsafe(self._write_group)
        except RuntimeError:  # that loop is closed: its writes are nobody's now
            with self._mutex:
                self._called = False
                self._waiting = [w for w in self._waiting if w.loop is not loop]
            self._release()

    def _commit_groups(self) -> None:
        db = self._writer_db
        while (next_ := self._commits.get()) is not None:
            group, change = next_
            try:
                db.execute("COMMIT")
            except Exception as exc:
                failed = self._translate(exc)
                if "IOERR" in str(getattr(exc, "sqlite_errorname", "")):
                    failed = OutcomeUnknown(f"the database file failed to commit: {exc}")
                self._roll_back(db)
                self._fail(group, failed)
                self._release()
                continue
            self.commits += 1
            self.committed_writes += len(group)
            if self.outage.since is not None:
                self.outage.ended()
            if self._kill is not None:
                self._kill.committed({write.kind for write in group})
            if change.notify and self.listener is not None:
                self.listener()
            self._answer(group)
            self._release()

    def _apply(self, change: Change, group: list[_Write[Any]]) -> None:
        """Every write of `group`, runs of the same `many` in one call; raises _Careful when
        one may have left part of itself behind."""
        at, end = 0, len(group)
        while at < end:
            write = group[at]
            run = at + 1
            if write.many is not None:
                while run < end and group[run].many is write.many:
                    run += 1
            if run - at > 1:
                writes = group[at:run]
                try:
                    results = write.many(change, [w.item for w in writes])  # type: ignore[misc]
                except Exception as exc:
                    raise _Careful from exc
                for each, result in zip(writes, results, strict=True):
                    each.result = result
            else:
                try:
                    write.result = write.body(change)
                except Exception as exc:
                    error = self._translate(exc)
                    if isinstance(error, StoreUnavailable):
                        raise error from exc
                    if not isinstance(error, OrderflowError):
                        raise _Careful from exc
                    write.error = error
            at = run

    def _apply_carefully(self, change: Change, group: list[_Write[Any]]) -> None:
        """Every write of `group` alone, under a savepoint: one that fails leaves nothing."""
        db = change.db
        for write in group:
            write.error = None
            deltas, notify = Counter(change.deltas), change.notify
            db.execute("SAVEPOINT w")
            try:
                write.result = write.body(change)
            except Exception as exc:
                error = self._translate(exc)
                if isinstance(error, StoreUnavailable):
                    raise error from exc
                write.error = error
                db.execute("ROLLBACK TO w")
                change.deltas, change.notify = deltas, notify
            db.execute("RELEASE w")

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

    def on_writer(self, statement: str) -> Any:
        """Run `statement` (a pragma) on the writing connection, between two groups; its first
        value, if any: the writer's settings as SQLite applies them, read or changed."""
        while True:
            with self._mutex:
                if not self._taken:
                    self._taken = True
                    break
            time.sleep(0.001)
        try:
            row = self._writer_db.execute(statement).fetchone()
            return None if row is None else row[0]
        finally:
            self._release()

    def close(self) -> None:
        """Let the group under way commit, fail what still waits, close every connection."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for write in waiting:
            write.error = StoreUnavailable("the store is closed")
        self._answer(waiting)
        for _ in range(10_000):  # a group being written goes on to its commit, 10 s at most
            with self._mutex:
                if not self._taken:
                    break
            time.sleep(0.001)
        self._commits.put(None)
        self._thread.join()
        with contextlib.suppress(Exception):
            self._writer_db.close()
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
