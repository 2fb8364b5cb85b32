"""The SQLite file itself: where the URL says it is (`SqliteUrl`), created readable by its
owner alone, owned by one server at a time (`FileLock`), recognised as ours and of a schema we
know (`check_identity`) before anything is written to it, migrated (`migrate`), and copied
online (`backup`).

Whose file. A file is ours when its application_id says so; its user_version is the number
of the last migration applied. A file with tables and another application_id (or none) is
someone else's; one whose user_version is beyond our newest migration was written by a newer
orderflow. Either is refused, naming the file, and left as it is: nothing is written to a file
before it passed these checks.

One server per file. The server holds an exclusive `flock` on the database file for as long as
it runs. SQLite locks with POSIX byte-range locks, which on Linux never meet an flock, so
`orderflow db backup` (a plain SQLite reader) copies the file while the server runs, and a
second server, or `orderflow db migrate`, finds the flock taken and is refused. The lock's
descriptor stays open until every connection of the process to the file is closed: closing any
descriptor of a file drops the POSIX locks the process holds on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from orderflow.domain import reversed_id, search_key
from orderflow.errors import StoreUnavailable

APPLICATION_ID = 0x6F666C77  # "oflw": the mark of an orderflow file
SYNCHRONOUS = ("full", "normal")


class SqliteUrl:
    """``sqlite:///orders.db`` (relative to the working directory) or
    ``sqlite:////var/lib/orderflow/orders.db`` (absolute), as SQLAlchemy spells them, with
    ``?synchronous=normal`` optional. Raises ValueError saying what is wrong."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or parts.fragment:
            raise ValueError(
                f"{url!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        path = parts.path.removeprefix("/")
        if not path or path.endswith("/") or path == ":memory:":
            raise ValueError(f"{url!r}: name a file (sqlite:///orders.db); memory:// keeps none")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ValueError(f"{url!r}: unknown option {sorted(unknown)[0]!r} (only synchronous)")
        self.synchronous = options.get("synchronous", "full").lower()
        if self.synchronous not in SYNCHRONOUS:
            raise ValueError(f"{url!r}: synchronous must be full or normal")
        self.path = Path(path).absolute()


def create_private(path: Path) -> None:
    """Create `path` empty, readable and writable by its owner alone, if it does not exist.
    SQLite gives the -wal and -shm files beside it the same mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreUnavailable(f"cannot create {path}: {exc.strerror}") from exc
    os.close(fd)


class FileLock:
    """An exclusive flock on `path`, held until `release` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise StoreUnavailable(
                f"{path} is in use by another orderflow process (one server per SQLite file;"
                " several instances share PostgreSQL)"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def migrations() -> list[tuple[int, str, str]]:
    """Every migration: (number, name, SQL), in order."""
    folder = resources.files("orderflow.store.migrations_sqlite")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(int(f.name[:4]), f.name.removesuffix(".sql"), f.read_text()) for f in files]


def newest_version() -> int:
    return migrations()[-1][0]


def check_identity(db: Any, path: Path) -> int:
    """The schema version of the file `db` reads (0: an empty file, ours to make); raises
    StoreUnavailable, naming the file, when it is someone else's or a newer orderflow's."""
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    if application_id != APPLICATION_ID:
        if application_id == 0 and tables == 0 and version == 0:
            return 0
        raise StoreUnavailable(f"{path} is not an orderflow database (it holds other data)")
    newest = newest_version()
    if version > newest:
        raise StoreUnavailable(
            f"{path} was written by a newer orderflow (schema {version}; this one knows up to"
            f" {newest}): upgrade orderflow"
        )
    return int(version)


def migrate(db: Any, version: int) -> list[str]:
    """Apply every migration after `version` to `db` (writing, autocommit), each in one
    transaction with its record; returns the names applied."""
    applied = []
    # What a migration computes in Python (the search keys of the rows there are).
    db.create_function("orderflow_search_key", 1, search_key, deterministic=True)
    db.create_function("orderflow_reversed", 1, reversed_id, deterministic=True)
    for number, name, script in migrations():
        if number <= version:
            continue
        db.executescript(
            "BEGIN IMMEDIATE;"
            f" PRAGMA application_id = {APPLICATION_ID};"
            " CREATE TABLE IF NOT EXISTS schema_migrations ("
            "  version TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT (datetime('now')));"
            f" {script};"
            f" INSERT INTO schema_migrations (version) VALUES ('{name}');"
            f" PRAGMA user_version = {number};"
            " COMMIT;"
        )
        applied.append(name)
    return applied


def backup(source: Any, target: Any) -> None:
    """Copy the database `source` reads into `target` (a connection to a new file), in one
    step: a consistent copy of the last commit, while writers go on (WAL)."""
    source.backup(target)
