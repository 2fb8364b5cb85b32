"""The `orderflow` command: `serve` runs the service; also `python -m orderflow`."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from orderflow import __version__
from orderflow.settings import DEFAULTS, ENV_PREFIX, load_settings, settings_to_env
from orderflow.snapshot import check_snapshot_path

if TYPE_CHECKING:
    from orderflow.api.app import OrderflowApp

F = TypeVar("F", bound=Callable[..., Any])
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def _option(flag: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    name = flag.removeprefix("--").replace("-", "_")
    if "is_flag" not in kwargs:
        kwargs.setdefault("default", getattr(DEFAULTS, name))
        kwargs.setdefault("show_default", True)
    return click.option(flag, envvar=ENV_PREFIX + name.upper(), help=help, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orderflow")
def main() -> None:
    """orderflow: take customer orders over HTTP and ship them concurrently.

    Every option of `serve` can also be set as ORDERFLOW_<OPTION>, e.g. ORDERFLOW_PORT=9000.
    """


@main.command()
@_option("--host", "Address to listen on.")
@_option("--port", "Port to listen on.", type=int)
@_option("--concurrency", "Most shipments in flight at once.", type=int)
@_option("--ship-delay", "Seconds each simulated shipment takes.", type=float)
@_option("--ship-jitter", "Up to this many random seconds added to each shipment.", type=float)
@_option("--ship-failure-rate", "Fraction of simulated shipments that fail (0 to 1).", type=float)
@_option("--process-timeout", "Seconds before a shipment fails with 'timeout'.", type=float)
@_option("--shutdown-grace", "Seconds shipments may finish on SIGINT/SIGTERM.", type=float)
@_option("--max-attempts", "Attempts per shipment before the order fails.", type=int)
@_option("--retry-backoff", "Seconds before the first retry; doubles each time.", type=float)
@_option("--poll-interval", "Seconds between looks for work nobody announced.", type=float)
@_option("--heartbeat-interval", "Seconds between heartbeats to a shared store.", type=float)
@_option(
    "--lease-timeout", "Seconds without a heartbeat before others take our orders.", type=float
)
@_option("--auto-process", "Ship each order as it arrives.", is_flag=True, default=None)
@_option(
    "--snapshot",
    "Load orders from PATH at start, write them there at shutdown.",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
)
@_option("--database-url", "Where orders live: memory:// or postgresql://….")
@click.option(
    "--migrate/--no-migrate",
    envvar="ORDERFLOW_MIGRATE",
    default=None,
    help="Apply database migrations at start (default: yes).",
)
@_option(
    "--log-level",
    "Least severe level logged.",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--server",
    envvar="ORDERFLOW_SERVER",
    type=click.Choice(["granian", "uvicorn"]),
    default="granian",
    show_default=True,
    help="HTTP server to run under.",
)
def serve(server: str, **options: Any) -> None:
    """Serve the HTTP API until SIGINT or SIGTERM, then stop gracefully."""
    try:
        settings = load_settings({}, **options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if settings.snapshot:
        try:
            check_snapshot_path(Path(settings.snapshot))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--snapshot") from None
    _check_port_free(settings.host, settings.port)
    # The server imports the app in its own process: hand it the settings as the environment.
    os.environ.update(settings_to_env(settings))
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "orderflow.api.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            lifespan="on",
        )
        return
    run_granian(
        "orderflow.cli:granian_worker_app",
        settings.host,
        settings.port,
        settings.log_level,
        factory=True,
    )


def granian_worker_app() -> OrderflowApp:
    """The app in granian's worker process. The worker must not outlive `orderflow serve`, its
    supervisor: killed with SIGKILL, the supervisor cannot stop it, and it would serve on as an
    orphan. So Linux is asked to send it SIGTERM then: a graceful stop (shipments handed back,
    the snapshot written)."""
    from orderflow.api.app import app_from_env  # in the worker only: the CLI starts lighter

    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    return app_from_env()


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another server listens on. Granian listens with SO_REUSEPORT, so a second
    server there would start and take half the connections (in memory: half the orders)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def run_granian(target: str, host: str, port: int, log_level: str, *, factory: bool) -> None:
    """Serve the ASGI app at `target` ("module:attr") with granian until a signal stops it:
    one worker process, one runtime thread (the event loop is the bottleneck anyway)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    Granian(
        target,
        factory=factory,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        runtime_threads=1,
        log_level=LogLevels(log_level),
    ).serve()


@main.command()
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of a running orderflow.",
)
@click.option(
    "--orders",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="How many orders to submit.",
)
@click.option(
    "--concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Requests in flight at once.",
)
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for the orders to ship after the trigger.",
)
def bench(url: str, orders: int, concurrency: int, timeout: float) -> None:
    """Load a running orderflow: submit, trigger, follow every order until it has shipped."""
    import asyncio

    import aiohttp

    from orderflow.loadgen import run_bench

    async def go() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout_30s = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout_30s) as client:
            with (
                click.progressbar(length=orders, label="submitting", file=sys.stderr) as submitted,
                click.progressbar(length=orders, label="shipping  ", file=sys.stderr) as shipped,
            ):
                bars = {"submit": submitted, "ship": shipped}
                result = await run_bench(
                    client,
                    orders,
                    concurrency,
                    timeout_s=timeout,
                    on_progress=lambda phase, n: bars[phase].update(n),
                )
        width = max(len(name) for name, _ in result.rows())
        for name, value in result.rows():
            click.echo(f"{name:<{width}}  {value}")
        if result.submit_errors or result.until_done_s is None:
            raise SystemExit(1)

    try:
        asyncio.run(go())
    except aiohttp.ClientError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None


@main.group()
def db() -> None:
    """The PostgreSQL schema."""


@db.command(name="migrate")
@click.option(
    "--database-url", envvar="ORDERFLOW_DATABASE_URL", required=True, help="postgresql://…"
)
def db_migrate(database_url: str) -> None:
    """Apply the schema migrations not applied yet."""
    import asyncio

    from orderflow.errors import StoreUnavailable
    from orderflow.store.postgres import PostgresOrderStore

    async def go() -> list[str]:
        store = await PostgresOrderStore.connect(database_url, apply_migrations=False)
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = asyncio.run(go())
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    for version in applied:
        click.echo(f"applied {version}")
    click.echo("database schema is up to date")
