"""The `orderflow` command: `serve` runs the service; `bench` loads one; `db migrate` applies the
schema; `db backup` copies a SQLite file online. Also `python -m orderflow`. A start-up failure
is one line naming the cause, exit 2."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from orderflow.errors import SettingError
from orderflow.settings import DEFAULTS, ENV_PREFIX, Settings, listed, load_settings
from orderflow.version import __version__

F = TypeVar("F", bound=Callable[..., Any])
_ALL_INTERFACES = ("0.0.0.0", "::", "")


def _option(flag: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    name = flag.removeprefix("--").replace("-", "_")
    if "is_flag" not in kwargs:
        kwargs.setdefault("default", getattr(DEFAULTS, name))
        kwargs.setdefault("show_default", kwargs["default"] is not None)
    return click.option(flag, envvar=ENV_PREFIX + name.upper(), help=help, **kwargs)


def fail(message: str) -> NoReturn:
    """A start-up failure: one line on stderr, exit status 2."""
    click.echo(f"orderflow: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orderflow")
def cli() -> None:
    """orderflow: take customer orders over HTTP and ship them concurrently.

    Every option of `serve` can also be set as ORDERFLOW_<OPTION>, e.g. ORDERFLOW_PORT=9000.
    """


def main(argv: list[str] | None = None) -> None:
    """The `orderflow` command. A bad flag is one line naming it, exit status 2, like every
    other start-up failure (click's own report takes four)."""
    try:
        status = cli.main(args=argv, prog_name="orderflow", standalone_mode=False)
    except click.BadParameter as exc:
        flag = exc.param.opts[0] if exc.param is not None and exc.param.opts else exc.param_hint
        fail(f"{flag}: {exc.message}" if flag else exc.format_message())
    except click.UsageError as exc:
        fail(f"{exc.format_message()} (see orderflow --help)")
    except click.ClickException as exc:
        click.echo(f"orderflow: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


@cli.command()
@_option("--host", "Address to listen on.")
@_option("--port", "Port to listen on (0: any free port).", type=int)
@_option("--concurrency", "Most shipments in flight at once.", type=int)
@_option(
    "--shipper",
    "What ships an order: simulated, python:module:function, or an http(s):// URL.",
)
@_option(
    "--shipper-secret",
    "The whsec_ key the HTTP shipper signs its calls with.",
    default=None,
    show_default=False,
)
@_option("--ship-delay", "Seconds each simulated shipment takes.", type=float)
@_option("--ship-jitter", "Up to this many random seconds added to each shipment.", type=float)
@_option("--ship-failure-rate", "Fraction of simulated shipments that fail (0 to 1).", type=float)
@_option("--process-timeout", "Seconds before a shipment attempt fails with 'timeout'.", type=float)
@_option("--shutdown-grace", "Seconds shipments may finish on SIGINT/SIGTERM.", type=float)
@_option("--max-attempts", "Attempts per shipment before the order fails.", type=int)
@_option("--retry-backoff", "Seconds before the first retry; doubles each time.", type=float)
@_option("--poll-interval", "Seconds between looks for work nobody announced.", type=float)
@_option("--heartbeat-interval", "Seconds between lease renewals.", type=float)
@_option("--lease-timeout", "Seconds without renewal before others take our orders.", type=float)
@_option("--auto-process", "Ship each order as it arrives.", is_flag=True, default=None)
@_option(
    "--snapshot",
    "Load orders from PATH at start, write them there at a clean stop (in memory only).",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
)
@_option(
    "--snapshot-recover",
    "Load a snapshot left by a run that crashed (its orders may ship again).",
    is_flag=True,
    default=None,
)
@_option(
    "--database-url",
    "Where orders live: memory://, sqlite:///path.db (one file, durable) or postgresql://….",
)
@click.option(
    "--migrate/--no-migrate",
    envvar="ORDERFLOW_MIGRATE",
    default=None,
    help="Apply database migrations at start (default: yes).",
)
@_option("--idempotency-ttl", "Seconds an Idempotency-Key is kept, at least.", type=float)
@_option("--event-retention", "Seconds order events are kept.", type=float)
@_option(
    "--event-retention-count", "Most order events kept (older ones are pruned first).", type=int
)
@_option(
    "--sse-keep-alive", "Seconds between keep-alive comments on a quiet event stream.", type=float
)
@_option(
    "--sse-stream-bytes",
    "Bytes after which an event stream ends and its reader resumes (what bounds the memory a"
    " stalled reader holds in the server).",
    type=int,
)
@_option(
    "--webhook",
    "POST every order event to URL, signed (repeatable; ORDERFLOW_WEBHOOK: comma-separated)."
    " Subscribed at start unless a subscription to URL exists.",
    multiple=True,
    default=None,
    show_default=False,
    metavar="URL",
    callback=lambda _ctx, _param, urls: ",".join(urls) or None,
)
@_option(
    "--webhook-secret",
    "The whsec_ key --webhook subscriptions sign their calls with.",
    default=None,
    show_default=False,
)
@_option(
    "--webhook-retry-schedule",
    "Seconds to wait before each retry of a failed webhook delivery, comma-separated.",
)
@_option("--webhook-timeout", "Seconds before a webhook delivery attempt fails.", type=float)
@_option(
    "--webhook-allow-private",
    "Let webhooks go to loopback, private, link-local and other internal addresses (refused by"
    " default: a subscription must not reach this machine or its networks).",
    is_flag=True,
    default=None,
)
@_option("--http-idle-timeout", "Seconds a client may take to send a request.", type=float)
@_option("--max-connections", "Most connections served at once.", type=int)
@_option(
    "--allowed-hosts",
    "Host names answered, comma-separated (default: loopback names and the bound address;"
    " any when bound to all interfaces).",
    default=None,
    show_default=False,
)
@_option("--allowed-origins", "Origins whose pages may change orders, comma-separated.")
@_option(
    "--auth-tokens",
    "A file of 'ROLE TOKEN' lines (roles: read, submit, operate): require bearer tokens.",
    type=click.Path(dir_okay=False),
    default=None,
    show_default=False,
    metavar="FILE",
)
@_option(
    "--insecure-no-auth",
    "Allow serving a non-loopback address without --auth-tokens.",
    is_flag=True,
    default=None,
)
@_option(
    "--log-level",
    "Least severe level logged.",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@_option("--log-format", "Log lines as text or JSON.", type=click.Choice(["text", "json"]))
@_option("--access-log", "Log one line per request.", is_flag=True, default=None)
@click.option(
    "--server",
    envvar="ORDERFLOW_SERVER",
    type=click.Choice(["granian", "uvicorn"]),
    default="granian",
    show_default=True,
    help="HTTP server: granian (RSGI) or uvicorn (ASGI, for development).",
)
def serve(server: str, **options: Any) -> None:
    """Serve the HTTP API until SIGINT or SIGTERM, then stop gracefully."""
    try:
        settings = load_settings({}, **options)
    except SettingError as exc:
        fail(str(exc))
    from orderflow.logs import configure_logging

    granian_logging = configure_logging(settings.log_level, settings.log_format)
    from orderflow.errors import StartupError
    from orderflow.runtime import Runtime
    from orderflow.server import bind, build_app, raise_open_files_limit, run, serve

    try:
        http = http_settings(settings)
        sock = bind(settings.host, settings.port)
    except (StartupError, ValueError) as exc:
        fail(str(exc))
    raise_open_files_limit()
    runtime = Runtime(settings)
    app = build_app(runtime, http)

    def ready(port: int) -> None:
        import logging

        logging.getLogger("orderflow").info(
            "orderflow %s serving http://%s:%d (store %s, concurrency %d, shipper %s%s)",
            __version__,
            f"[{settings.host}]" if ":" in settings.host else settings.host,
            port,
            _without_password(settings.database_url),
            settings.concurrency,
            settings.shipper
            if "://" not in settings.shipper
            else _without_password(settings.shipper),
            ", auth on" if http.auth is not None else "",
        )

    try:
        run(
            serve(
                runtime,
                app,
                sock,
                server=server,
                max_connections=settings.max_connections,
                idle_timeout_s=settings.http_idle_timeout,
                granian_logging=granian_logging,
                log_level=settings.log_level,
                on_ready=ready,
            )
        )
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # a second Ctrl-C during the stop
        sys.exit(130)


def http_settings(settings: Settings) -> Any:
    """The HTTP layer's settings from the flags. Raises StartupError."""
    import logging

    from orderflow.api.app import LOOPBACK_HOSTS, HttpSettings
    from orderflow.api.auth import Auth
    from orderflow.errors import StartupError

    loopback = settings.host in LOOPBACK_HOSTS or settings.host.startswith("127.")
    auth = None
    if settings.auth_tokens:
        try:
            auth = Auth.from_file(Path(settings.auth_tokens))
        except ValueError as exc:
            raise StartupError(f"--auth-tokens: {exc}") from None
    elif not loopback:
        if not settings.insecure_no_auth:
            raise StartupError(
                f"--host: {settings.host} is not a loopback address: give --auth-tokens, or"
                " --insecure-no-auth to serve it to anyone"
            )
        logging.getLogger("orderflow").warning(
            "serving %s without authentication (--insecure-no-auth)", settings.host
        )
    if settings.allowed_hosts is not None:
        hosts: frozenset[str] | None = frozenset(h.lower() for h in listed(settings.allowed_hosts))
    elif settings.host in _ALL_INTERFACES:
        hosts = None
    else:
        bound = f"[{settings.host}]" if ":" in settings.host else settings.host
        hosts = LOOPBACK_HOSTS | {settings.host.lower(), bound.lower()}
    return HttpSettings(
        allowed_hosts=hosts,
        allowed_origins=frozenset(listed(settings.allowed_origins)),
        idle_timeout_s=settings.http_idle_timeout,
        auth=auth,
        access_log=settings.access_log,
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@cli.command()
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="A running orderflow: a base URL, or host:port.",
)
@click.option(
    "--orders", default=1000, show_default=True, type=click.IntRange(1), help="Orders to submit."
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
@click.option("--token", envvar="ORDERFLOW_TOKEN", default=None, help="A bearer token (operate).")
def bench(url: str, orders: int, concurrency: int, timeout: float, token: str | None) -> None:
    """Load a running orderflow: submit, trigger, follow every order until it has shipped."""
    from orderflow.loadgen import main as run_bench

    run_bench(url, orders, concurrency, timeout, token)


@cli.group()
def db() -> None:
    """The database: its schema (SQLite or PostgreSQL), and copies of a SQLite file."""


@db.command(name="migrate")
@click.option(
    "--database-url",
    envvar="ORDERFLOW_DATABASE_URL",
    required=True,
    help="sqlite:///path.db or postgresql://…",
)
def db_migrate(database_url: str) -> None:
    """Apply the schema migrations not applied yet (a SQLite file: not while a server holds
    it; it migrates at start anyway)."""
    from orderflow.errors import StoreUnavailable

    async def go() -> list[str]:
        if database_url.startswith("sqlite:"):
            from orderflow.store.sqlite import migrate_file

            return await migrate_file(database_url)
        from orderflow.store.postgres import PostgresOrderStore

        store = await PostgresOrderStore.connect(database_url, apply_migrations=False)
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = asyncio.run(go())
    except (StoreUnavailable, ValueError) as exc:
        fail(f"--database-url: {exc}")
    for version in applied:
        click.echo(f"applied {version}")
    click.echo("database schema is up to date")


@db.command(name="backup")
@click.option(
    "--database-url", envvar="ORDERFLOW_DATABASE_URL", required=True, help="sqlite:///path.db"
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def db_backup(database_url: str, file: Path) -> None:
    """Copy a SQLite database to FILE (a new file, readable by its owner alone): a consistent
    copy of its last commit, taken online, while a server runs on it."""
    from orderflow.errors import StoreUnavailable

    if not database_url.startswith("sqlite:"):
        fail("--database-url: backup copies a SQLite file (sqlite:///path.db)")
    from orderflow.store.sqlite import backup_file

    try:
        backup_file(database_url, file)
    except (StoreUnavailable, ValueError) as exc:
        fail(f"--database-url: {exc}")
    except FileExistsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{file}: {exc.strerror or exc}")
    click.echo(f"copied to {file}")
