"""OrderflowApp: serves the route tables it is handed over granian's RSGI (``__rsgi__``) or over
ASGI (the instance is an ASGI application), through one `dispatch` that does what every request
needs:

    Host check (421) → route (404, 405 with Allow, HEAD) → Origin check on changes (403)
    → bearer token and role (401, 403) → handler → errors as problem+json
    → ``X-Content-Type-Options: nosniff`` on every answer

No wiring here, and no feature known: the app is handed its routes, the services its handlers
take, and the service's lifespan (started by whoever serves it, or by the ASGI lifespan when
`manage_lifespan` is set); it answers 503 on the routes that need the service while it is not
running. It adds the routes that describe the API (`openapi.description_routes`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from orderflow.api.errors import HTTPProblem, problem_from_error
from orderflow.api.http import (
    NOSNIFF,
    Request,
    Response,
    content_length,
    cut_short,
    problem_response,
    query_pairs,
    timed_out,
    too_large,
)
from orderflow.api.openapi import description_routes
from orderflow.api.routing import Route, Router
from orderflow.api.schemas import MAX_BODY_BYTES
from orderflow.api.validation import every_query_error
from orderflow.errors import OrderflowError, ShuttingDown
from orderflow.metrics import METRICS

if TYPE_CHECKING:
    from orderflow.api.auth import Auth

log = logging.getLogger("orderflow.api")
access_log = logging.getLogger("orderflow.access")

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]

_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UNMATCHED = METRICS.route("unmatched")  # no route (404), or not with that method (405)
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_OWN_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True)
class HttpSettings:
    """What the HTTP layer checks.

    Attributes:
        allowed_hosts: Host header names answered (None: any).
        allowed_origins: origins (``scheme://host[:port]``) whose pages may change things, on
            top of the service's own origin.
        idle_timeout_s: how long a body may take to arrive.
        auth: bearer tokens and roles (None: no authentication).
        access_log: one line per request on the ``orderflow.access`` logger.
    """

    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS
    allowed_origins: frozenset[str] = frozenset()
    idle_timeout_s: float = 30.0
    auth: Auth | None = None
    access_log: bool = False


class Lifespan(Protocol):
    """What the app knows of the service it serves: whether it runs, and how to start and stop
    it (only when the app manages it)."""

    @property
    def started(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


T = TypeVar("T")


class OrderflowApp(Generic[T]):
    """Args:
    routes: the route tables to serve, joined (the composition root joins them).
    services: what each handler is handed, first (see `routing`).
    lifespan: the service's state; its start and stop when `manage_lifespan`.
    manage_lifespan: start and stop `lifespan` from the ASGI lifespan (tests, uvicorn).
    """

    def __init__(
        self,
        routes: Sequence[Route[T]],
        services: T,
        lifespan: Lifespan,
        settings: HttpSettings | None = None,
        *,
        manage_lifespan: bool = False,
    ) -> None:
        self.services = services
        self.lifespan = lifespan
        self.settings = settings = settings or HttpSettings()
        self._manage_lifespan = manage_lifespan
        self.routes: tuple[Route[T], ...] = (
            *routes,
            *description_routes(routes, auth=settings.auth is not None),
        )
        self.router = Router(self.routes)
        self._hosts = settings.allowed_hosts
        self._host_ok: dict[str | None, bool] = {}
        self._origins = settings.allowed_origins
        self._auth = settings.auth
        self._access_log = settings.access_log
        # Bodies being read (what cancels each: see `read`), and the watchdog tick they
        # started at: one check a second for all of them, instead of a timer per request.
        self._reading: dict[Any, int] = {}
        self._timed_out: set[Any] = set()
        self._tick = 0
        self._watchdog: asyncio.Task[None] | None = None

    # -- the one path every request takes ----------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        """The answer to `request`; never raises. Counted in the metrics by route template."""
        request.began = began = perf_counter()
        method = request.method
        stats = _UNMATCHED
        route: Route[T] | None = None
        try:
            if self._hosts is not None:
                host = request.headers.get("host")
                known = self._host_ok.get(host)
                if known is None:
                    known = self._check_host(host)
                if not known:
                    raise HTTPProblem(
                        "misdirected-request", f"this service does not answer for {host!r}"
                    )
            found = self.router.find(request.path)
            if found is None:
                raise HTTPProblem("not-found", f"no route for {method} {request.path}")
            methods, request.params = found
            route = methods.get("GET" if method == "HEAD" else method)
            if route is None:
                response = self._not_allowed(request, methods)
                _UNMATCHED.record(method, response.status, perf_counter() - began)
                return response
            stats = route.stats
            request.route = route.path
            if method in _CHANGES:
                origin = request.headers.get("origin")
                if origin is not None and not self._origin_allowed(origin, request):
                    raise HTTPProblem(
                        "forbidden", f"pages from {origin} may not change anything here"
                    )
            if self._auth is not None and route.role is not None:
                request.role = self._auth.check(request.headers.get("authorization"), route.role)
            if route.needs_service and not self.lifespan.started:
                raise ShuttingDown("the service is not running")
            response = await route.handler(self.services, request)
        except HTTPProblem as exc:
            if exc.problem.status == 400 and exc.problem.errors and route and request.query:
                exc = self._every_query_error(exc, route, request.query)
            response = problem_response(exc)
        except OrderflowError as exc:
            problem = problem_from_error(exc)
            if problem.problem.status == 500:  # a bug (a value the store refused, say)
                log.error("error on %s %s", method, request.path, exc_info=exc)
            response = problem_response(problem)
        except Exception:
            log.exception("unhandled error on %s %s", method, request.path)
            response = problem_response(problem_from_error(OrderflowError()))
        headers = response.headers
        if not headers or headers[0] is not NOSNIFF:  # a handler's own list, without it
            response.headers = headers = [NOSNIFF, *headers]
        if self._origins and (origin := request.headers.get("origin")) in self._origins:
            response.headers = [*headers, ("access-control-allow-origin", origin),
                                ("vary", "origin")]  # fmt: skip
        stats.record(method, response.status, perf_counter() - began)
        return response

    def _every_query_error(self, problem: HTTPProblem, route: Route[T], query: str) -> HTTPProblem:
        """`problem` naming every bad query parameter, not only the one the handler met."""
        try:
            pairs = query_pairs(query)
        except HTTPProblem:
            return problem
        return every_query_error(problem, route.params, pairs)

    def _check_host(self, host: str | None) -> bool:
        allowed = host is not None and self._hosts is not None and _hostname(host) in self._hosts
        if len(self._host_ok) < 1024:  # the Host headers seen, a few; never grows past that
            self._host_ok[host] = allowed
        return allowed

    def _not_allowed(self, request: Request, methods: dict[str, Route[Any]]) -> Response:
        allow = self.router.allow[id(methods)]
        origin = request.headers.get("origin")
        if (
            request.method == "OPTIONS"
            and origin in self._origins
            and request.headers.get("access-control-request-method") is not None
        ):  # a CORS preflight from an allowed origin
            return Response(204, b"", [
                NOSNIFF,
                ("access-control-allow-origin", origin),
                ("access-control-allow-methods", allow),
                ("access-control-allow-headers",
                 "authorization, content-type, idempotency-key, last-event-id"),
                ("access-control-max-age", "600"),
                ("vary", "origin"),
            ])  # fmt: skip
        problem = HTTPProblem(
            "method-not-allowed", f"this route takes {allow}", headers=[("allow", allow)]
        )
        return problem_response(problem)

    def _origin_allowed(self, origin: str, request: Request) -> bool:
        if origin in self._origins:
            return True
        # A page of our own (the dashboard) is no stranger: its origin is the Host it was
        # served from, over http or https (a proxy in front may end TLS), port included.
        host = request.headers.get("host")
        scheme, separator, rest = origin.partition("://")
        return (
            host is not None
            and separator == "://"
            and scheme.lower() in _OWN_SCHEMES
            and rest.lower() == host.lower()
        )

    # -- bodies ------------------------------------------------------------------------------

    async def read(self, request: Request) -> bytes:
        """Read a body with the rules of `Request.body` (the app is every request's reader)."""
        announced = content_length(request.headers)
        if announced is not None and announced > MAX_BODY_BYTES:
            raise too_large()
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="orderflow-body-watchdog")
        try:
            arriving = request.read_all()
        except RuntimeError:  # RSGIProtocolClosed, raised at once: the client went away
            raise cut_short(0, announced or 0) from None
        # What a late body cancels: granian's read is a future of its own; ASGI's reads are
        # this task's.
        late: Any = arriving if hasattr(arriving, "cancel") else asyncio.current_task()
        self._reading[late] = self._tick
        try:
            body = await arriving
        except asyncio.CancelledError:
            if late not in self._timed_out:
                raise
            self._timed_out.discard(late)
            task = asyncio.current_task()
            if late is task:
                task.uncancel()
            if task is not None and task.cancelling():
                raise  # cancelled from outside as well (a shutdown): that wins over a 408
            raise timed_out(self.settings.idle_timeout_s) from None
        except RuntimeError:  # RSGIProtocolClosed: the client went away mid-body
            raise cut_short(0, announced or 0) from None
        finally:
            del self._reading[late]
        if announced is not None and len(body) != announced:
            raise cut_short(len(body), announced)
        if len(body) > MAX_BODY_BYTES:
            raise too_large()
        return body

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.check_bodies()

    def check_bodies(self) -> None:
        """One look of the body watchdog (it looks every second): the reads of bodies late by
        the idle timeout are cancelled, and answer 408."""
        self._tick += 1
        limit = max(1, round(self.settings.idle_timeout_s))
        for late, started in list(self._reading.items()):
            # (granian's read refuses a cancel once its body is in: no 408 then)
            if self._tick - started >= limit and late not in self._timed_out and late.cancel():
                self._timed_out.add(late)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # -- RSGI (granian) ----------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        request = Request(
            scope.method, scope.path, scope.query_string, scope.headers, protocol, self
        )
        response = await self.dispatch(request)
        if response.stream is None:
            if request.method == "HEAD":
                length = ("content-length", str(len(response.body)))
                protocol.response_bytes(response.status, [*response.headers, length], b"")
            else:  # the usual case
                protocol.response_bytes(response.status, response.headers, response.body)
        elif request.method == "HEAD":
            await _discard(response)
            protocol.response_bytes(response.status, response.headers, b"")
        else:
            transport = protocol.response_stream(response.status, response.headers)
            await _pump(response, transport.send_bytes, protocol.client_disconnect)
        if self._access_log:
            self._log_access(request, response)

    def _log_access(self, request: Request, response: Response) -> None:
        duration_ms = round((perf_counter() - request.began) * 1000, 3)
        access_log.info(
            "%s %s %d %.3fms", request.method, request.path, response.status, duration_ms,
            extra={"method": request.method, "route": request.route or None,
                   "path": request.path, "status": response.status, "duration_ms": duration_ms},
        )  # fmt: skip

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        async def read_all() -> bytes:
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    announced = content_length(headers)
                    raise cut_short(size, announced or size)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise too_large()
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks)

        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        query = scope["query_string"].decode("latin-1")
        request = Request(scope["method"], path, query, headers, read_all, self)
        response = await self.dispatch(request)
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if request.method == "HEAD" and response.stream is None:
            raw_headers.append((b"content-length", str(len(response.body)).encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": raw_headers}
        )
        if response.stream is not None and request.method == "HEAD":
            await _discard(response)
            await send({"type": "http.response.body", "body": b""})
        elif response.stream is not None:

            async def send_chunk(chunk: bytes) -> None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

            async def disconnected() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass

            await _pump(response, send_chunk, disconnected)
            await send({"type": "http.response.body", "body": b""})
        else:
            body = b"" if request.method == "HEAD" else response.body
            await send({"type": "http.response.body", "body": body})
        if self._access_log:
            self._log_access(request, response)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            try:
                if kind == "lifespan.startup" and self._manage_lifespan:
                    await self.lifespan.start()
                elif kind == "lifespan.shutdown":
                    self.close()
                    if self._manage_lifespan:
                        await self.lifespan.stop()
            except Exception as exc:
                log.exception("%s failed", kind)
                await send({"type": f"{kind}.failed", "message": repr(exc)})
            else:
                await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return


async def _pump(
    response: Response,
    send: Callable[[bytes], Awaitable[None]],
    disconnected: Callable[[], Awaitable[None]],
) -> None:
    """Send a streamed response until it ends or the client goes away (then the stream is
    stopped at once, not at its next chunk)."""
    assert response.stream is not None
    task = asyncio.current_task()
    assert task is not None
    gone = asyncio.ensure_future(disconnected())

    def stop(_: object) -> None:
        task.cancel("the client went away")

    gone.add_done_callback(stop)
    try:
        async for chunk in response.stream:
            await send(chunk)
    except asyncio.CancelledError:
        if not gone.done():
            raise  # not the client: the server is stopping this task
        task.uncancel()
    except (OSError, RuntimeError):  # the client went away mid-send
        pass
    finally:
        gone.remove_done_callback(stop)
        gone.cancel()
        aclose = getattr(response.stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _discard(response: Response) -> None:
    aclose = getattr(response.stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _hostname(host: str) -> str:
    """The host part of a Host header (no port); IPv6 literals keep their brackets."""
    host = host.lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host
