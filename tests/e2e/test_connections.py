"""Connection limits of the real server: silent connections do not starve real clients, an
idle keep-alive connection is closed, and a body that stalls is answered 408. Each test prints
what it measured (run with -s to see it)."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Callable

import pytest

from tests.servers import Server

pytestmark = pytest.mark.e2e

SILENT = 2_000
IDLE_TIMEOUT_S = 2.0


def raise_own_open_files_limit(needed: int) -> None:
    """Let this process hold `needed` more sockets: the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed + 256:
        pytest.fail(f"the hard limit on open files ({hard}) is below the {needed} this test needs")


@pytest.fixture
def report(record_property: Callable[[str, object], None]) -> Callable[[str, float, str], None]:
    """`report(name, value, text)`: a measured figure, printed (seen with -s) and recorded as a
    property of the test (in a JUnit XML report)."""

    def figure(name: str, value: float, text: str) -> None:
        record_property(name, round(value, 4))
        print(f"\n{text}")  # noqa: T201 - the measured figures are this file's report

    return figure


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body, as bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return head + b"\r\n\r\n" + body


def seconds_until_closed(sock: socket.socket, limit_s: float) -> float:
    """How long until the server closes `sock` (EOF or reset); fails after `limit_s`."""
    began = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"still open after {limit_s} s")
    return time.monotonic() - began


def get_healthz(port: int) -> tuple[bytes, float]:
    began = time.monotonic()
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = read_response(sock)
    return response, time.monotonic() - began


def test_two_thousand_silent_connections_do_not_keep_a_client_waiting(
    serve: type[Server], report: Callable[[str, float, str], None]
) -> None:
    raise_own_open_files_limit(SILENT)
    server = serve("--log-level", "warning", "--http-idle-timeout", str(IDLE_TIMEOUT_S))
    with contextlib.ExitStack() as stack:
        began = time.monotonic()
        for _ in range(SILENT):
            stack.enter_context(connect(server.port))
        opened_s = time.monotonic() - began
        response, took_s = get_healthz(server.port)
        assert response.startswith(b"HTTP/1.1 200"), response
        # Once the idle timeout has passed with every one of them still open (the kernel may
        # hand them over then), a client is still served at once.
        time.sleep(IDLE_TIMEOUT_S + 0.5)
        response, later_s = get_healthz(server.port)
        assert response.startswith(b"HTTP/1.1 200"), response
        report("healthz_s", took_s, f"{SILENT} silent connections opened in {opened_s:.2f} s;"
               f" GET /healthz answered in {took_s * 1000:.1f} ms")  # fmt: skip
        report("healthz_after_idle_timeout_s", later_s, f"and {later_s * 1000:.1f} ms once"
               " the idle timeout had passed")  # fmt: skip
        assert took_s < 1.0
        assert later_s < 1.0
    assert server.terminate() == 0


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    serve: type[Server], report: Callable[[str, float, str], None]
) -> None:
    server = serve("--log-level", "warning", "--http-idle-timeout", str(IDLE_TIMEOUT_S))
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        idle_s = seconds_until_closed(sock, limit_s=IDLE_TIMEOUT_S * 4)
    report("idle_closed_after_s", idle_s, f"an idle keep-alive connection was closed after"
           f" {idle_s:.2f} s")  # fmt: skip
    assert IDLE_TIMEOUT_S * 0.5 <= idle_s <= IDLE_TIMEOUT_S * 2.5
    assert server.terminate() == 0


def test_a_body_that_stalls_after_its_headers_gets_408(
    serve: type[Server], report: Callable[[str, float, str], None]
) -> None:
    server = serve("--log-level", "warning", "--http-idle-timeout", str(IDLE_TIMEOUT_S))
    with connect(server.port) as sock:
        sock.sendall(
            b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n"
            b'{"customer": '
        )
        began = time.monotonic()
        sock.settimeout(IDLE_TIMEOUT_S * 4)
        response = read_response(sock)
        took_s = time.monotonic() - began
    report("stalled_body_answered_after_s", took_s, f"a body stalled after its headers was"
           f" answered {response[:12]!r} in {took_s:.2f} s")  # fmt: skip
    assert response.startswith(b"HTTP/1.1 408"), response
    assert IDLE_TIMEOUT_S * 0.5 <= took_s <= IDLE_TIMEOUT_S * 2.5
    with server.client() as client:
        assert client.get("/orders").json()["orders"] == []
    assert server.terminate() == 0
