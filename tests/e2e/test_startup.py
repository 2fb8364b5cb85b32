"""How `orderflow serve` starts: a start that cannot work fails before the port listens, in
one line naming the flag or file, with exit status 2 and no traceback; one that can says what
it serves in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orderflow import __version__
from tests.conftest import eventually_sync
from tests.e2e.conftest import all_orders, start_refused
from tests.faultproxy import FaultProxy
from tests.helpers import ORDER, ROOT, free_port, http_client, is_listening, submit
from tests.servers import Server

pytestmark = pytest.mark.e2e


# -- how a start fails --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(
            ["--database-url", "postgresql://postgres@127.0.0.1:1/x"],
            ["orderflow: --database-url:", "cannot connect"],
            id="database unreachable",
        ),
        pytest.param(
            ["--database-url", "redis://127.0.0.1/0"],
            ["orderflow: --database-url:", "'redis'"],
            id="unknown scheme",
        ),
        pytest.param(
            ["--concurrency", "0"],
            ["orderflow: --concurrency: must be at least 1\n"],
            id="concurrency 0",
        ),
        pytest.param(
            ["--lease-timeout", "1", "--heartbeat-interval", "1"],
            ["orderflow: --lease-timeout: must be at least 3 heartbeat intervals"],
            id="lease shorter than 3 heartbeats",
        ),
        pytest.param(
            ["--host", "0.0.0.0"],
            ["orderflow: --host: 0.0.0.0 is not a loopback address", "--auth-tokens"],
            id="all interfaces without tokens",
        ),
        pytest.param(
            ["--auth-tokens", "/nonexistent/orderflow-tokens"],
            ["orderflow: --auth-tokens:", "/nonexistent/orderflow-tokens"],
            id="tokens file missing",
        ),
        pytest.param(
            ["--shipper", "python:no.such:mod"],
            ["orderflow: --shipper", "no.such"],
            id="shipper module missing",
        ),
        pytest.param(
            ["--shipper", "http://127.0.0.1:9/ship"],
            ["orderflow: --shipper-secret"],
            id="http shipper without a secret",
        ),
    ],
)
def test_a_start_that_cannot_work_fails_in_one_line(flags: list[str], expected: list[str]) -> None:
    message = start_refused(*flags)
    for fragment in expected:
        assert fragment in message


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_named_in_postgres_own_words(database_url: str) -> None:
    missing = database_url.rsplit("/", 1)[0] + "/orderflow_no_such_database"
    message = start_refused("--database-url", missing)
    assert "orderflow: --database-url:" in message
    assert 'database "orderflow_no_such_database" does not exist' in message


@pytest.mark.postgres
def test_a_snapshot_with_postgresql_is_refused(database_url: str, tmp_path: Path) -> None:
    snapshot = tmp_path / "orders.jsonl"
    message = start_refused("--snapshot", str(snapshot), "--database-url", database_url)
    assert message.startswith("orderflow: --snapshot:")
    assert not snapshot.exists()
    assert not snapshot.with_name("orders.jsonl.loaded").exists()


@pytest.mark.parametrize(
    "content",
    [b"operate\n", b"admin s3cret-token\n", b"\xff\xfe\x00 not text\n"],
    ids=["no token", "unknown role", "not utf-8"],
)
def test_a_garbled_tokens_file_is_refused(tmp_path: Path, content: bytes) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_bytes(content)
    message = start_refused("--auth-tokens", str(tokens))
    assert message.startswith("orderflow: --auth-tokens:")
    assert "s3cret-token" not in message  # a token is never echoed


def test_a_second_server_on_a_busy_port_refuses_to_start(serve: type[Server]) -> None:
    """Regression: granian listened with SO_REUSEPORT, so a second server on the same port
    started and took half the connections, and half the orders, into a store of its own."""
    first = serve()
    [order_id] = submit(first, 1)
    message = start_refused(port=first.port)
    assert f"orderflow: --port: cannot listen on 127.0.0.1:{first.port}" in message
    with first.client() as client:  # the first one serves on, alone
        assert [o["id"] for o in all_orders(client)] == [order_id]
    assert first.terminate() == 0


def test_the_port_does_not_listen_until_the_store_is_open(tmp_path: Path) -> None:
    """The socket is bound first, but listens only once the runtime started: while the
    database does not answer, a client is refused, not left waiting; then the start fails."""
    port = free_port()
    with FaultProxy(("127.0.0.1", free_port())) as proxy:
        proxy.blackhole(True)  # the database never answers
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "orderflow", "serve", "--port", str(port),
                 "--database-url", proxy.url_for("postgresql://postgres@127.0.0.1:5432/x")],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True,
            )  # fmt: skip
            try:
                eventually_sync(lambda: proxy.total_connections >= 1)  # connecting to it now
                assert process.poll() is None
                assert not is_listening(port)
                assert is_bound(port)  # all the same
                proxy.blackhole(False)  # cuts the connection: the start fails
                assert process.wait(timeout=30) == 2
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
    stderr = log.read_text()
    assert stderr.startswith("orderflow: --database-url:"), stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) <= 2, stderr
    assert not is_listening(port)


def is_bound(port: int) -> bool:
    """Whether some socket is bound to `port` (a plain bind, without SO_REUSEADDR, fails)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def test_two_servers_starting_at_once_on_one_port_one_serves_the_other_fails_in_one_line(
    snapshot_lines: list[bytes], tmp_path: Path
) -> None:
    """Both bind before either listens (SO_REUSEADDR lets them): one must serve, and the other
    fail as on a busy port (exit status 2, the cause in its last line), not with a traceback.
    The first is held in its start by a snapshot it reads from a FIFO, until we write it."""
    port = free_port()
    fifo = tmp_path / "orders.jsonl"
    os.mkfifo(fifo)
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(name: str, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "orderflow", "serve", "--port", str(port), *flags],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        started.append((process, log))
        return process, log

    def settled(process: subprocess.Popen[bytes], log: Path) -> bool:
        return process.poll() is not None or "serving http://" in log.read_text()

    try:
        first, first_log = start("first", "--snapshot", str(fifo))
        eventually_sync(lambda: is_bound(port))  # bound, and now waiting for its snapshot
        assert first.poll() is None
        second, second_log = start("second")
        eventually_sync(lambda: settled(second, second_log))
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the first one is reading it
        with os.fdopen(writer, "wb") as snapshot:
            snapshot.write(b"".join(snapshot_lines))
        eventually_sync(lambda: settled(first, first_log))
        serving = [log.name for process, log in started if process.poll() is None]
        failed = [(process.returncode, log.read_text()) for process, log in started
                  if process.poll() is not None]  # fmt: skip
        assert len(serving) == 1, failed
        [(status, output)] = failed
        assert "Traceback" not in output, output
        assert status == 2, output
        assert output.splitlines()[-1].startswith(
            f"orderflow: --port: cannot listen on 127.0.0.1:{port}"
        ), output
        with http_client(f"http://127.0.0.1:{port}") as client:
            assert client.get("/healthz").status_code == 200
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


# -- how a start succeeds -----------------------------------------------------------------------


@pytest.mark.postgres
def test_the_start_up_line_says_version_real_url_store_concurrency_and_shipper(
    serve: type[Server], database_url: str
) -> None:
    with_password = database_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    assert with_password != database_url
    server = serve("--database-url", with_password, "--concurrency", "7", port=0)
    assert server.port != 0
    line = server.startup_line
    assert f"orderflow {__version__} serving http://127.0.0.1:{server.port} " in line
    assert f"store {with_password.replace(':s3cret-pw@', ':***@')}," in line
    assert "concurrency 7," in line
    assert "shipper simulated" in line
    assert "s3cret-pw" not in server.output()
    with server.client() as client:  # the URL it printed is where it answers
        assert client.get("/healthz").status_code == 200
    assert server.terminate() == 0


def test_all_interfaces_without_tokens_starts_with_a_warning_when_told_to(
    serve: type[Server],
) -> None:
    server = serve("--host", "0.0.0.0", "--insecure-no-auth", "--concurrency", "3")
    assert "WARNING" in server.output()
    assert "without authentication (--insecure-no-auth)" in server.output()
    assert f"serving http://0.0.0.0:{server.port} (store memory://, concurrency 3," in (
        server.startup_line
    )
    with server.client() as client:  # and it answers anyone: no token asked for
        assert client.post("/orders", json=ORDER).status_code == 201
    assert server.terminate() == 0


def test_granians_experimental_warning_comes_after_orderflows_lines_that_explain_it(
    serve: type[Server],
) -> None:
    """Granian says "Embedded server is experimental!" at every start; an operator used to read
    it with nothing to tell whether to trust it. orderflow's start line and a line saying what
    it means (and where the README says more) now come before it."""
    server = serve()
    lines = server.output().splitlines()

    def first(words: str) -> int:
        found = [i for i, line in enumerate(lines) if words in line]
        assert found, f"no line says {words!r}:\n{server.output()}"
        return found[0]

    warning = first("Embedded server is experimental!")
    note = first("granian serves HTTP embedded")
    assert first(server.startup_line) < note < warning
    assert "README (Deploy)" in lines[note]
    readme = (ROOT / "README.md").read_text()
    deploy = readme.partition("\n## Deploy\n")[2].partition("\n## ")[0]
    assert "Embedded server is experimental!" in deploy
    assert server.terminate() == 0


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orderflow", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert __version__ in out.stdout
