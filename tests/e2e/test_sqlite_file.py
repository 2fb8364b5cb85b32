"""The SQLite file and the processes around it: one server per file (a second one, and `db
migrate`, are refused while it runs; `db backup` copies it meanwhile), files that are not ours,
damaged or of a newer schema refused at start with one line and left as they were, and the
mode of every file made."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orderflow.store.sqlite_file import migrations, newest_version
from tests.e2e.conftest import start_refused
from tests.helpers import ROOT, submit
from tests.servers import Server

pytestmark = pytest.mark.e2e


def orderflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orderflow", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_second_server_on_the_same_file_is_refused_and_backup_copies_it_meanwhile(
    serve: type[Server], tmp_path: Path
) -> None:
    path = tmp_path / "orders.db"
    url = f"sqlite:///{path}"
    server = serve("--database-url", url)
    ids = submit(server, 25)
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("orders.db"))
    assert [p.name for p in files] == ["orders.db", "orders.db-shm", "orders.db-wal"]
    assert {mode(p) for p in files} == {0o600}
    message = start_refused("--database-url", url)
    assert f"{path} is in use by another orderflow process" in message
    migrate = orderflow("db", "migrate", "--database-url", url)
    assert migrate.returncode == 2
    assert migrate.stderr.startswith(f"orderflow: --database-url: {path} is in use"), migrate
    copy = tmp_path / "copy.db"
    backup = orderflow("db", "backup", "--database-url", url, str(copy))
    assert backup.returncode == 0, backup.stderr
    assert mode(copy) == 0o600
    db = sqlite3.connect(copy)
    assert sorted(row[0] for row in db.execute("SELECT id FROM orders")) == sorted(ids)
    db.close()
    again = orderflow("db", "backup", "--database-url", url, str(copy))
    assert again.returncode == 2
    assert "exists" in again.stderr
    with server.client() as client:
        assert client.get("/readyz").status_code == 200  # the copies left it running
    assert server.terminate() == 0
    restored = serve("--database-url", f"sqlite:///{copy}")  # a copy is a database of its own
    with restored.client() as client:
        assert client.get(f"/orders/{ids[0]}").status_code == 200


def test_migrate_makes_a_file_a_server_then_uses(serve: type[Server], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    migrated = orderflow("db", "migrate", "--database-url", url)
    assert migrated.stdout.splitlines() == [
        *(f"applied {name}" for _, name, _ in migrations()),
        "database schema is up to date",
    ]
    assert migrated.stdout.startswith("applied 0001_orders\napplied 0002_webhooks\n")
    assert orderflow("db", "migrate", "--database-url", url).stdout.splitlines() == [
        "database schema is up to date"
    ]
    assert mode(tmp_path / "orders.db") == 0o600
    server = serve("--database-url", url, "--no-migrate")
    assert submit(server, 1)


@pytest.fixture
def ours(serve: type[Server], tmp_path: Path) -> Path:
    """An orderflow file with orders in it, its server stopped."""
    path = tmp_path / "orders.db"
    server = serve("--database-url", f"sqlite:///{path}")
    submit(server, 300)
    assert server.terminate() == 0
    return path


def test_a_file_of_a_newer_schema_is_refused_and_left_as_it_is(ours: Path) -> None:
    db = sqlite3.connect(ours)
    db.execute("PRAGMA user_version = 99")
    db.close()
    before = digest(ours)
    message = start_refused("--database-url", f"sqlite:///{ours}")
    assert message.strip() == (
        f"orderflow: --database-url: {ours} was written by a newer orderflow (schema 99; this"
        f" one knows up to {newest_version()}): upgrade orderflow"
    )
    assert digest(ours) == before


def test_a_damaged_file_is_refused_and_left_as_it_is(ours: Path) -> None:
    data = bytearray(ours.read_bytes())
    page = 4096
    for n in range(3, 8):  # the headers of pages of orders and indexes
        data[n * page : n * page + 12] = b"\xa5" * 12
    ours.write_bytes(bytes(data))
    before = digest(ours)
    message = start_refused("--database-url", f"sqlite:///{ours}")
    assert message.startswith(f"orderflow: --database-url: {ours} is damaged ("), message
    assert "restore a backup" in message
    assert digest(ours) == before


def test_a_file_with_a_damaged_header_is_refused_and_left_as_it_is(ours: Path) -> None:
    data = bytearray(ours.read_bytes())
    data[:16] = b"not sqlite 3 \x00\x00\x00"
    ours.write_bytes(bytes(data))
    before = digest(ours)
    message = start_refused("--database-url", f"sqlite:///{ours}")
    assert message.strip() == (
        f"orderflow: --database-url: {ours} cannot be used: it is not an orderflow database,"
        " or it is damaged (file is not a database)"
    )
    assert digest(ours) == before


def test_a_foreign_sqlite_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('ada')")
    db.commit()
    db.close()
    before = digest(path)
    for args in (["serve", "--port", "0"], ["db", "migrate"]):
        out = orderflow(*args, "--database-url", f"sqlite:///{path}")
        assert out.returncode == 2
        assert out.stderr.strip() == (
            f"orderflow: --database-url: {path} is not an orderflow database (it holds other data)"
        )
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_a_relative_url_is_a_file_in_the_working_directory(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orderflow", "db", "migrate", "--database-url", "sqlite:///o.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "o.db").exists()
    for bad in ("sqlite://host/o.db", "sqlite:///", "sqlite:///o.db?synchronous=off",
                "sqlite:///o.db?journal=x"):  # fmt: skip
        refused = start_refused("--database-url", bad)
        assert refused.startswith("orderflow: --database-url: "), refused
