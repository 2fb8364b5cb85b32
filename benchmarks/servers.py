"""Start and stop the servers the HTTP benchmarks load, pinned to one core, on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

SERVER_CORE = "0"
LOAD_CORE = "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(core: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", core, *command] if shutil.which("taskset") else command


@contextlib.contextmanager
def server(
    command: list[str], port: int, ready_path: str = "/", core: str | None = SERVER_CORE
) -> Iterator[str]:
    """Run `command` (which serves on `port`) pinned to `core` (None: any); yield its URL."""
    with served(command, port, ready_path, core) as (url, _):
        yield url


@contextlib.contextmanager
def served(
    command: list[str], port: int, ready_path: str = "/", core: str | None = SERVER_CORE
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`server`, yielding the process too (taskset runs the command in its own process)."""
    process = subprocess.Popen(
        command if core is None else pinned(core, command),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                httpx.get(url + ready_path, timeout=1)
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{command} did not start")
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def orderflow_command(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "orderflow", "serve", "--port", str(port), *args]


def nullapp_command(port: int, interface: str = "rsgi") -> list[str]:
    return [sys.executable, "-m", "benchmarks.nullapp", str(port), interface]


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User and system CPU seconds of process `pid` (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_pids(pid: int) -> list[int]:
    """`pid` and every process below it."""
    pids, seen = [pid], 0
    while seen < len(pids):
        try:
            tasks = os.listdir(f"/proc/{pids[seen]}/task")
        except FileNotFoundError:
            tasks = []
        for task in tasks:
            try:
                with open(f"/proc/{pids[seen]}/task/{task}/children") as children:
                    pids += [int(child) for child in children.read().split()]
            except FileNotFoundError:  # a thread that ended meanwhile
                pass
        seen += 1
    return pids
