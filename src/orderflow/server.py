"""Serving: the runtime and the app in one process, over granian's RSGI (its native protocol)
or uvicorn's ASGI, until SIGINT or SIGTERM; and `build_app`, where the features' route tables
are joined and handed to the app with the runtime as their services (the composition root).

The order of a start makes every failure show before anyone can connect: the listening socket
is bound (a busy port fails here), the runtime starts (store, snapshot, shipper), and only then
does the socket listen. Granian runs embedded in this process's event loop: one process, so
there is no worker to orphan and nothing to hand settings to.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from orderflow.api.app import HttpSettings, OrderflowApp
from orderflow.api.routes import EVENT_ROUTES, META_ROUTES, ORDER_ROUTES
from orderflow.api.routing import Route
from orderflow.dashboard import DASHBOARD_ROUTES
from orderflow.errors import StartupError
from orderflow.runtime import Runtime
from orderflow.webhooks.routes import WEBHOOK_ROUTES

log = logging.getLogger("orderflow.server")

BACKLOG = 4096
# Granian warns "Embedded server is experimental!" at every start; said just before it, so that
# an operator reads what it means first.
EMBEDDED_NOTE = (
    "granian serves HTTP embedded in this process and its event loop; granian's next line calls"
    " that mode experimental: the README (Deploy) says what that covers and how it is tested"
)


#: Every route the service serves (the app adds those that describe the API); the runtime
#: satisfies what each table's handlers ask of their services, which mypy checks here.
ROUTES: tuple[Route[Runtime], ...] = (
    *ORDER_ROUTES,
    *EVENT_ROUTES,
    *WEBHOOK_ROUTES,
    *META_ROUTES,
    *DASHBOARD_ROUTES,
)


def build_app(
    runtime: Runtime, settings: HttpSettings | None = None, *, manage_runtime: bool = False
) -> OrderflowApp[Runtime]:
    """The app serving every route over `runtime` (`manage_runtime`: the ASGI lifespan
    starts and stops it)."""
    return OrderflowApp(ROUTES, runtime, runtime, settings, manage_lifespan=manage_runtime)


def bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; raises StartupError naming the port.

    No SO_REUSEPORT: a second server on a busy port must fail, not share the port (and, in
    memory, split the orders between two stores)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"--port: cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` to completion on uvloop when it is installed (measured here: about 15% more
    requests per second than the standard loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        asyncio.run(main)
    else:
        uvloop.run(main)


# Collect the youngest objects every 20,000 allocations instead of 700: a request leaves a few
# dozen behind (frames, tasks, futures), nearly all freed by reference counting, and a young
# collection walks every young object alive, so the default threshold collected many times a
# second for little. Measured: about 8% more POSTs a second; memory grows by the garbage in
# cycles of 20,000 allocations at most.
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> None:
    """Tune the collector for serving, once the runtime holds what it loaded at start: that is
    frozen (never walked again by a collection), and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def raise_open_files_limit() -> int:
    """Let this process hold as many connections as the system allows it; returns the limit."""
    if sys.platform == "win32":  # pragma: no cover
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


async def serve(
    runtime: Runtime,
    app: OrderflowApp[Runtime],
    sock: socket.socket,
    *,
    server: str = "granian",
    max_connections: int = 10_000,
    idle_timeout_s: float = 30.0,
    granian_logging: dict[str, Any] | None = None,
    log_level: str = "info",
    on_ready: Any = None,
) -> None:
    """Start `runtime`, serve `app` on `sock` until SIGINT/SIGTERM, then stop `runtime`.
    `on_ready(port)` is called once the socket listens. Raises StartupError."""
    await runtime.start()
    try:
        settle_gc()
        # Linux: a connection is handed over only once it sent something (or after the idle
        # timeout), so silent connections do not take the server's connection slots.
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, round(idle_timeout_s))
        try:
            sock.listen(BACKLOG)
        except OSError as exc:  # another server took the port between our bind and listen
            host, port = sock.getsockname()[:2]
            raise StartupError(f"--port: cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.setblocking(False)
        if on_ready is not None:
            on_ready(sock.getsockname()[1])
        if server == "uvicorn":
            await _serve_uvicorn(app, sock)
        else:
            log.info(EMBEDDED_NOTE)
            await serve_granian(
                app,
                sock,
                max_connections=max_connections,
                idle_timeout_s=idle_timeout_s,
                logging_config=granian_logging,
                log_level=log_level,
                before_stop=lambda: _before_stop(runtime),
            )
    finally:
        try:
            await runtime.stop()
        finally:
            app.close()
            with contextlib.suppress(OSError):  # the server may have closed it already
                sock.close()


async def serve_granian(
    app: Any,
    sock: socket.socket,
    *,
    interface: str = "rsgi",
    max_connections: int = 10_000,
    idle_timeout_s: float = 30.0,
    logging_config: dict[str, Any] | None = None,
    log_level: str = "info",
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve `app` (RSGI, or "asgi") with granian embedded in this event loop, on `sock`
    (bound and listening; granian owns it from here on), until SIGINT or SIGTERM; then await
    `before_stop()` and stop serving (granian waits for the responses under way)."""
    from granian._granian import SocketHolder
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server.embed import Server

    address, port = sock.getsockname()[:2]
    holder = SocketHolder(sock.detach(), False, BACKLOG)  # type: ignore[call-arg]

    class _Server(Server):
        def _init_shared_socket(self) -> None:  # serve on our socket: bound and listening
            self._ssp, self._shd, self._sfd = None, holder, holder.get_fd()  # type: ignore[assignment]

    granian = _Server(
        app,
        address=address,
        port=port,
        interface=Interfaces.RSGI if interface == "rsgi" else Interfaces.ASGINL,
        runtime_threads=1,
        backlog=BACKLOG,
        backpressure=max_connections,
        http1_settings=HTTP1Settings(header_read_timeout=round(idle_timeout_s * 1000)),
        log_dictconfig=logging_config,
        log_level=LogLevels(log_level),
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    async def stop() -> None:
        if before_stop is not None:
            await before_stop()
        granian.stop()  # type: ignore[no-untyped-call]

    def on_signal() -> None:
        if not stopping:  # once: a second signal changes nothing
            stopping.append(asyncio.create_task(stop()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await granian.serve()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _before_stop(runtime: Runtime) -> None:
    """Refuse new work and end the event streams (granian waits for every response to end
    before it stops); the runtime stops after that."""
    log.info("stopping: no new work; shipments in flight get the shutdown grace")
    runtime.service.stopping = True
    await runtime.events.close()


async def _serve_uvicorn(app: OrderflowApp[Runtime], sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    await uvicorn.Server(config).serve(sockets=[sock])
