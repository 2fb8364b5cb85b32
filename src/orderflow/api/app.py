"""create_app(): the ASGI application. A small explicit route table, msgspec for every body, and
no per-request framework machinery, so the hot paths cost little more than the server itself.

Routing, body decoding and error mapping each live in one place below (`_route`, `_read_json`,
`api/errors.py`). The lifespan starts the processor and, when the app owns it, the whole
service (store, snapshot); on shutdown it stops shipping, writes the snapshot and closes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from orderflow.api.errors import (
    INTERNAL_ERROR,
    HTTPProblem,
    problem_from_error,
    problem_from_validation,
)
from orderflow.api.openapi import DOCS_HTML, openapi_document
from orderflow.api.schemas import (
    FieldError,
    Health,
    Message,
    OrderCreate,
    OrderPage,
    OrderRef,
    Problem,
    ProcessingStarted,
)
from orderflow.clock import SystemClock
from orderflow.domain import DEFAULT_PAGE, OrderQuery, OrderStatus, is_order_id
from orderflow.errors import OrderflowError
from orderflow.processor import Processor
from orderflow.service import MAX_PAGE, OrderService
from orderflow.settings import Settings, load_settings
from orderflow.shipping import SimulatedShipper
from orderflow.snapshot import load_snapshot, save_snapshot
from orderflow.store import open_store

log = logging.getLogger("orderflow.api")

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024

_encode = msgspec.json.Encoder().encode
_decode_order_create = msgspec.json.Decoder(OrderCreate).decode
_JSON = [(b"content-type", b"application/json")]
_PROBLEM = [(b"content-type", b"application/problem+json")]

Response = tuple[int, bytes, list[tuple[bytes, bytes]]]


def _ok(status: int, body: msgspec.Struct) -> Response:
    return status, _encode(body), _JSON


def _problem(problem: Problem, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return problem.status, _encode(problem), _PROBLEM + (headers or [])


async def _read_json(scope: Scope, receive: Receive) -> bytes:
    """The request body, once it is known to be JSON and at most 64 KiB."""
    content_type = length = None
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value
        elif key == b"content-length":
            length = value
    if content_type is None or not _is_json(content_type):
        raise HTTPProblem(415, "Unsupported media type", "send the body as application/json")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HTTPProblem(413, "Body too large", f"the body must be at most {MAX_BODY_BYTES} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if message.get("more_body"):
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise HTTPProblem(
                    413, "Body too large", f"the body must be at most {MAX_BODY_BYTES} bytes"
                )
            chunks.append(chunk)
        body = b"".join(chunks)
    if len(body) > MAX_BODY_BYTES:
        raise HTTPProblem(413, "Body too large", f"the body must be at most {MAX_BODY_BYTES} bytes")
    return body


def _is_json(content_type: bytes) -> bool:
    """application/json, or a structured +json type (application/problem+json, say)."""
    if content_type == b"application/json":  # the usual case, without parsing
        return True
    media_type = content_type.split(b";")[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


def _bad_query(field: str, message: str) -> HTTPProblem:
    return HTTPProblem(400, "Invalid query", f"{field}: {message}", [FieldError(field, message)])


# An unescaped '+' before an offset arrives as a space (form encoding).
_SPACE_BEFORE_OFFSET = re.compile(r" (\d\d:?\d\d)$")


def _time_param(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time from the query, in UTC (no offset means UTC)."""
    if value is None:
        return None
    try:
        at = msgspec.convert(_SPACE_BEFORE_OFFSET.sub(r"+\1", value), datetime)
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except msgspec.ValidationError:
        raise _bad_query(name, "not an RFC 3339 time") from None
    except OverflowError:  # in range with its offset, out of range in UTC
        raise _bad_query(name, "out of range") from None


def _list_query(query_string: bytes) -> OrderQuery:
    params: dict[str, str] = {}
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key not in _LIST_PARAMS:
            raise _bad_query(key, f"not a parameter (use {', '.join(_LIST_PARAMS)})")
        if key in params:
            raise _bad_query(key, "given more than once")
        params[key] = value
    start, end = _time_param("from", params.get("from")), _time_param("to", params.get("to"))
    if start is not None and end is not None and start > end:
        raise _bad_query("from", "must not be after 'to'")
    status = params.get("status")
    if status is not None and status not in _STATUSES:
        raise _bad_query("status", f"not one of {', '.join(_STATUSES)}")
    limit = params.get("limit", str(DEFAULT_PAGE))
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_PAGE):
        raise _bad_query("limit", f"not a whole number from 1 to {MAX_PAGE}")
    cursor = params.get("cursor")
    if cursor is not None and not is_order_id(cursor):
        raise _bad_query("cursor", "not a cursor this API returned")
    return OrderQuery(
        start=start,
        end=end,
        status=None if status is None else OrderStatus(status),
        limit=int(limit),
        cursor=cursor,
    )


_LIST_PARAMS = ("from", "to", "status", "limit", "cursor")
_STATUSES = tuple(status.value for status in OrderStatus)


class OrderflowApp:
    """The ASGI application over one OrderService.

    Args:
        service: the service to serve; its processor is started and stopped by the lifespan.
        settings: when no service is given, build one from these at startup (store, shipper,
            snapshot) and tear it down at shutdown.
    """

    def __init__(
        self, service: OrderService | None = None, settings: Settings | None = None
    ) -> None:
        if service is None and settings is None:
            raise ValueError("give a service or settings")
        self.service = service
        self.settings = settings or Settings()
        self._owns_service = service is None
        self._static: dict[str, Response] = {  # answers that never change
            "/healthz": _ok(200, Health("ok")),
            "/openapi.json": (200, _encode(openapi_document()), _JSON),
            "/docs": (200, DOCS_HTML, [(b"content-type", b"text/html; charset=utf-8")]),
        }

    # -- lifespan ---------------------------------------------------------------------------

    async def startup(self) -> None:
        if self.service is None:
            self.service = await _build_service(self.settings)
        await self.service.processor.start()

    async def shutdown(self) -> None:
        service = self.service
        if service is None:
            return
        await service.processor.stop(self.settings.shutdown_grace)
        if self._owns_service:
            if self.settings.snapshot:
                await save_snapshot(service.store, Path(self.settings.snapshot))
            await service.store.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            try:
                if kind == "lifespan.startup":
                    await self.startup()
                elif kind == "lifespan.shutdown":
                    await self.shutdown()
            except Exception as exc:
                log.exception("%s failed", kind)
                await send({"type": f"{kind}.failed", "message": repr(exc)})
                if kind == "lifespan.shutdown":
                    return
                continue
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return

    # -- requests ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        method: str = scope["method"]
        try:
            # HEAD is GET without the body (RFC 9110).
            status, body, headers = await self._route(
                scope, receive, "GET" if method == "HEAD" else method
            )
        except OrderflowError as exc:
            status, body, headers = _problem(problem_from_error(exc))
        except HTTPProblem as exc:
            status, body, headers = _problem(
                exc.problem, [(b"allow", exc.allow)] if exc.allow else None
            )
        except Exception:
            log.exception("unhandled error on %s %s", method, scope["path"])
            status, body, headers = _problem(INTERNAL_ERROR)
        if method == "HEAD":
            headers = [*headers, (b"content-length", str(len(body)).encode())]
            body = b""
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive, method: str) -> Response:
        path: str = scope["path"]
        service = self.service
        if service is None:
            raise HTTPProblem(503, "Starting up", "the service is not ready yet")
        if path == "/orders":
            if method == "POST":
                return await self._create_order(scope, receive)
            if method == "GET":
                page = await service.list_orders(_list_query(scope["query_string"]))
                return _ok(200, OrderPage(page.orders, len(page.orders), page.next_cursor))
            raise _method_not_allowed(b"GET, HEAD, POST")
        parts = path.split("/")  # "/orders/x/cancel" → ["", "orders", "x", "cancel"]
        if len(parts) >= 3 and parts[1] == "orders" and parts[2]:
            if len(parts) == 3:
                if parts[2] == "process":
                    if method != "POST":
                        raise _method_not_allowed(b"POST")
                    count = await service.trigger_processing()
                    return _ok(202, ProcessingStarted("Processing started", count))
                order_id = parts[2]
                if method == "GET":
                    return _ok(200, await service.get_order(order_id))
                if method == "DELETE":
                    await service.delete_order(order_id)
                    return _ok(200, Message("Order deleted"))
                raise _method_not_allowed(b"DELETE, GET, HEAD")
            if len(parts) == 4 and parts[2] == "status" and parts[3]:
                if method != "GET":
                    raise _method_not_allowed(b"GET, HEAD")
                order = await service.get_order(parts[3])
                return _ok(200, OrderRef(order.id, order.status))
            if len(parts) == 4 and parts[3] == "cancel":
                if method != "POST":
                    raise _method_not_allowed(b"POST")
                order = await service.cancel_order(parts[2])
                return _ok(200, OrderRef(order.id, OrderStatus.CANCELLED))
        static = self._static.get(path)
        if static is not None:
            if method != "GET":
                raise _method_not_allowed(b"GET, HEAD")
            return static
        raise HTTPProblem(404, "Not found", f"no route for {method} {path}")

    async def _create_order(self, scope: Scope, receive: Receive) -> Response:
        body = await _read_json(scope, receive)
        try:
            create = _decode_order_create(body)
        except msgspec.ValidationError as exc:
            raise problem_from_validation(exc, 422, "Invalid order") from None
        except msgspec.DecodeError as exc:
            raise HTTPProblem(400, "Malformed JSON", str(exc)) from None
        except UnicodeDecodeError:
            raise HTTPProblem(400, "Malformed JSON", "the body is not UTF-8") from None
        assert self.service is not None
        order = await self.service.submit(create.customer, create.items)
        return (
            201,
            _encode(OrderRef(order.id, order.status)),
            [*_JSON, (b"location", f"/orders/{order.id}".encode())],
        )


def _method_not_allowed(allow: bytes) -> HTTPProblem:
    return HTTPProblem(405, "Method not allowed", f"this route takes {allow.decode()}", allow=allow)


async def _build_service(settings: Settings) -> OrderService:
    clock = SystemClock()
    store = await open_store(settings.database_url, migrate=settings.migrate)
    if settings.snapshot:
        await load_snapshot(store, Path(settings.snapshot), clock)
    shipper = SimulatedShipper(
        settings.ship_delay, settings.ship_jitter, settings.ship_failure_rate
    )
    processor = Processor(
        store,
        shipper,
        clock,
        concurrency=settings.concurrency,
        timeout_s=settings.process_timeout,
        poll_interval_s=settings.poll_interval,
        max_attempts=settings.max_attempts,
        retry_backoff_s=settings.retry_backoff,
        heartbeat_s=settings.heartbeat_interval,
        lease_s=settings.lease_timeout,
    )
    return OrderService(store, processor, clock, auto_process=settings.auto_process)


def create_app(
    service: OrderService | None = None, settings: Settings | None = None
) -> OrderflowApp:
    """The ASGI app; see `OrderflowApp`."""
    return OrderflowApp(service, settings)


def app_from_env() -> OrderflowApp:
    """Factory for the server process: settings from the ORDERFLOW_* environment."""
    settings = load_settings(os.environ)
    configure_logging(settings.log_level)
    return OrderflowApp(settings=settings)


def configure_logging(level: str) -> None:
    """One line per event: time, level, logger, message (order events carry order_id=…)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
