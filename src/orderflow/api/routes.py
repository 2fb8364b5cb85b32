"""The service's own route tables: orders (`ORDER_ROUTES`), the event log (`EVENT_ROUTES`) and
operations (`META_ROUTES`). Each endpoint is one `Route` (method, path, handler, request and
answer types, parameters, statuses, role); routing, ``405 Allow``, HEAD and the OpenAPI document
all come from them. The handlers take the running service's face (`Services`) and our
`Request`, and answer a `Response`; they talk to the services only, never to a store.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from orderflow.api.errors import HTTPProblem, bad_query, invalid_query
from orderflow.api.http import JSON, NOSNIFF, Request, Response, json_response, no_body
from orderflow.api.routing import Param, Route
from orderflow.api.schemas import (
    RETRY_NOTE,
    ActionRequest,
    BulkRequest,
    BulkResult,
    BulkRetried,
    EventPage,
    Health,
    InstanceList,
    Message,
    OrderCreate,
    OrderPage,
    OrderRef,
    OrderRetried,
    ProcessingStarted,
    Readiness,
    Throughput,
)
from orderflow.domain import (
    DEFAULT_PAGE,
    MAX_BULK_IDS,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_SEQ,
    MIN_ID_TAIL,
    ORDER_ID_LENGTH,
    ORDER_ID_PATTERN,
    PLAIN_PATTERN,
    Event,
    EventType,
    Order,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Stats,
    check_plain,
    is_order_id,
    new_order_id,
    search_key,
    utc_instant,
)
from orderflow.events import EventFilter, EventHub, parse_types
from orderflow.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from orderflow.metrics import exposition
from orderflow.metrics import registry as metrics_registry
from orderflow.service import OrderService


class Services(Protocol):
    """What these routes need of the running service (the runtime is one)."""

    @property
    def service(self) -> OrderService: ...

    @property
    def events(self) -> EventHub: ...

    async def refresh_gauges(self) -> None:
        """Read the store-wide gauges (orders by status, the oldest pending, …) into the
        metrics, if the service runs."""


IDEMPOTENCY_KEY_PATTERN = "^[\\x21-\\x7e]{1,255}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_STATUSES = tuple(status.value for status in OrderStatus)


# -- orders -------------------------------------------------------------------------------------

_decode_create = msgspec.json.Decoder(OrderCreate).decode
_decode_action = msgspec.json.Decoder(ActionRequest).decode
_decode_bulk = msgspec.json.Decoder(BulkRequest).decode


async def create_order(services: Services, request: Request) -> Response:
    key = request.headers.get("idempotency-key")
    if key is not None and _IDEMPOTENCY_KEY.match(key) is None:
        raise HTTPProblem("bad-request", "Idempotency-Key: 1 to 255 printable ASCII characters")
    create: OrderCreate = await request.json(_decode_create)
    done = await services.service.submit(create.customer, create.items, key)
    headers = [NOSNIFF, JSON, ("location", f"/orders/{done.order_id}")]
    if done.replayed:
        headers.append(("idempotent-replayed", "true"))
    return Response(201, _encode(OrderRef(done.order_id, done.status)), headers)


_SORTS = ("oldest", "newest")
NEWEST_CURSOR = "-"  # what starts a cursor of a listing newest first


async def list_orders(services: Services, request: Request) -> Response:
    params = request.query_params(
        ("from", "to", "status", "customer", "order", "sort", "limit", "cursor")
    )
    sort = params.get("sort", "oldest")
    if sort not in _SORTS:
        raise bad_query("sort", f"not one of {', '.join(_SORTS)}")
    newest = sort == "newest"
    query = OrderQuery(
        start=_time(params, "from"),
        end=_time(params, "to"),
        status=_status(params),
        limit=_limit(params),
        cursor=_cursor(params.get("cursor"), newest),
        customer=_customer(params.get("customer")),
        id_tail=_id_tail(params.get("order")),
        newest=newest,
    )
    page = await services.service.list_orders_json(query)
    if newest and page.next_cursor is not None:
        page = msgspec.structs.replace(page, next_cursor=NEWEST_CURSOR + page.next_cursor)
    return json_response(200, page)


def _cursor(cursor: str | None, newest: bool) -> str | None:
    """The id a cursor goes on from; a cursor of the other sort is a 422."""
    if cursor is None:
        return None
    made_newest = cursor.startswith(NEWEST_CURSOR)
    order_id = cursor.removeprefix(NEWEST_CURSOR)
    if not is_order_id(order_id):
        raise bad_query("cursor", "not a cursor this API returned")
    if made_newest != newest:
        made = "newest" if made_newest else "oldest"
        raise invalid_query("cursor", f"made for sort={made}; list again from the start")
    return order_id


def _customer(value: str | None) -> str | None:
    """The search key of the customer prefix searched for."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_NAME_LENGTH:
        raise invalid_query("customer", f"must be 1 to {MAX_NAME_LENGTH} characters")
    try:
        check_plain(value, "customer")
    except ValueError as exc:
        raise invalid_query("customer", str(exc).partition(": ")[2]) from None
    return search_key(value)


def _id_tail(value: str | None) -> str | None:
    if value is None:
        return None
    if not MIN_ID_TAIL <= len(value) <= ORDER_ID_LENGTH:
        raise invalid_query("order", f"an order id, or its last {MIN_ID_TAIL} characters or more")
    return value


def _status(params: dict[str, Any]) -> OrderStatus | None:
    status = params.get("status")
    if status is None:
        return None
    if status not in _STATUSES:
        raise bad_query("status", f"not one of {', '.join(_STATUSES)}")
    return OrderStatus(status)


def _limit(params: dict[str, Any]) -> int:
    limit = params.get("limit", str(DEFAULT_PAGE))
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_PAGE):
        raise bad_query("limit", f"not a whole number from 1 to {MAX_PAGE}")
    return int(limit)


# An unescaped '+' before an offset arrives as a space (form encoding).
_SPACE_BEFORE_OFFSET = re.compile(r" (\d\d:?\d\d)$")


def _time(params: dict[str, str], name: str) -> datetime | None:
    """An RFC 3339 time from the query, in UTC, by the rule of every client's time
    (`domain.utc_instant`: no offset means UTC)."""
    value = params.get(name)
    if value is None:
        return None
    if " " in value:
        value = _SPACE_BEFORE_OFFSET.sub(r"+\1", value)
    try:
        return utc_instant(msgspec.convert(value, datetime), name)
    except msgspec.ValidationError:
        raise bad_query(name, "not an RFC 3339 time") from None
    except ValueError as exc:  # in range with its offset, out of range in UTC
        raise bad_query(name, str(exc).partition(": ")[2]) from None


async def get_order(services: Services, request: Request) -> Response:
    return Response(200, await services.service.get_order_json(request.params[0]))


async def get_status(services: Services, request: Request) -> Response:
    order = await services.service.get_order(request.params[0])
    return json_response(200, OrderRef(order.id, order.status))


async def delete_order(services: Services, request: Request) -> Response:
    await services.service.delete_order(request.params[0])
    return json_response(200, Message("Order deleted"))


async def cancel_order(services: Services, request: Request) -> Response:
    action = await _optional_body(request)
    order = await services.service.cancel_order(request.params[0], action.reason)
    return json_response(200, OrderRef(order.id, order.status))


async def retry_order(services: Services, request: Request) -> Response:
    action = await _optional_body(request)
    order = await services.service.retry_order(request.params[0], action.reason)
    note = None if services.service.auto_process else RETRY_NOTE
    return json_response(200, OrderRetried(order.id, order.status, note))


async def _optional_body(request: Request) -> ActionRequest:
    if no_body(request):
        return ActionRequest()
    action: ActionRequest = await request.json(_decode_action)
    return action


async def trigger(services: Services, request: Request) -> Response:
    count = await services.service.trigger_processing()
    return json_response(202, ProcessingStarted("Processing started", count))


async def bulk_retry(services: Services, request: Request) -> Response:
    answer = await _bulk(services, request, Event.RETRY, "retried in bulk by an operator")
    waits = not (services.service.auto_process or answer.dry_run)  # a dry run retried nothing
    return json_response(
        200, BulkRetried(answer.count, answer.dry_run, RETRY_NOTE if waits else None)
    )


async def bulk_cancel(services: Services, request: Request) -> Response:
    answer = await _bulk(services, request, Event.CANCEL, "cancelled in bulk by an operator")
    return json_response(200, answer)


async def _bulk(services: Services, request: Request, event: Event, default: str) -> BulkResult:
    bulk: BulkRequest = await request.json(_decode_bulk)  # its times in UTC
    service, reason = services.service, bulk.reason or default
    if bulk.ids is not msgspec.UNSET:
        count = await service.act_on_ids(event, bulk.ids, reason, dry_run=bulk.dry_run)
        return BulkResult(count, bulk.dry_run)
    where = OrderFilter(
        start=bulk.start,
        end=bulk.end,
        reason_contains=bulk.reason_contains,
        customer=None if bulk.customer is None else search_key(bulk.customer),
    )
    count = await service.act_in_bulk(
        event, where, reason, status=bulk.status, dry_run=bulk.dry_run
    )
    return BulkResult(count, bulk.dry_run)


async def stats(services: Services, request: Request) -> Response:
    return json_response(200, await services.service.stats())


async def throughput(services: Services, request: Request) -> Response:
    start, end, minutes = await services.service.throughput()
    return json_response(200, Throughput(start, end, minutes))


async def instances(services: Services, request: Request) -> Response:
    return json_response(200, InstanceList(await services.service.instances()))


# -- events -------------------------------------------------------------------------------------

_SSE_HEADERS = [
    NOSNIFF,
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),  # proxies: do not hold the stream back
]
_TYPES = tuple(t.value for t in EventType)


async def events(services: Services, request: Request) -> Response:
    params = request.query_params(("order_id", "status", "after", "limit"), ("type",))
    try:
        types = parse_types(params.get("type", ()))
    except ValueError as exc:
        raise bad_query("type", f"{exc} is not one of {', '.join(_TYPES)}") from None
    wanted = EventFilter(params.get("order_id"), types, _status(params))
    after = _seq(params.get("after"), "after")
    last_event_id = _seq(request.headers.get("last-event-id"), "Last-Event-ID")
    if after is None:
        after = last_event_id
    hub = services.events
    accept = request.headers.get("accept") or ""
    if "application/json" in accept and "text/event-stream" not in accept:
        found, position = await hub.page(after, _limit(params), wanted)
        return json_response(200, EventPage(found, len(found), position))
    await hub.ready_to_stream(after)  # 410 or 503 before the stream starts
    return Response(200, b"", _SSE_HEADERS, hub.stream(after, wanted))


_SEQ_PATTERN = f"^[0-9]{{1,{len(str(MAX_SEQ))}}}$"


def _seq(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(MAX_SEQ))):
        raise bad_query(name, "not an event id (a seq) this API sent")
    return int(value)


# -- operations ---------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode
_HEALTHY = _encode(Health("ok"))


async def healthz(services: Services, request: Request) -> Response:
    return Response(200, _HEALTHY)


async def readyz(services: Services, request: Request) -> Response:
    await services.service.ready()
    return json_response(200, Readiness("ready", services.service.auto_process))


async def metrics(services: Services, request: Request) -> Response:
    await services.refresh_gauges()  # store-wide figures, read now: alike on every instance
    return Response(200, exposition(_registry()), _PROMETHEUS_HEADERS)


_PROMETHEUS_HEADERS = [NOSNIFF, ("content-type", PROMETHEUS_TEXT)]


@functools.cache
def _registry() -> Any:
    return metrics_registry()


# -- the table ----------------------------------------------------------------------------------

_ID = Param("id", {"type": "string", "pattern": ORDER_ID_PATTERN}, "an order id", "path", True)
_TIME = {"type": "string", "format": "date-time"}
_EXAMPLE_ID = new_order_id(datetime(2026, 1, 1, 12, tzinfo=UTC), 0x1234)
_REASON_BODY = 'An optional JSON body `{"reason": "…"}` says why, for the order\'s history.'
_RETRY_NOTE = (
    " While auto-process is off, the answer carries `note`: retried orders wait in pending"
    " until POST /orders/process."
)
_BULK = (
    f"Takes the orders `ids` names (1 to {MAX_BULK_IDS}; unknown ones, and orders in a status the"
    " action does not apply to, are skipped), or every order that matches the filters of"
    " GET /orders: `status`, `customer` (a prefix, any case), created in [`from`, `to`), and"
    " whose latest history entry's reason contains `reason_contains` (any case); each filter is"
    " optional, `{}` takes all; `ids` with a filter is a 422. With `dry_run: true` nothing"
    " changes and `count` says how many orders the action would take. Atomic per order, in"
    " batches; safe to run alongside anything else."
)

_LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                         "default": DEFAULT_PAGE})  # fmt: skip
_STATUS = {"type": "string", "enum": list(_STATUSES)}

ORDER_ROUTES: tuple[Route[Services], ...] = (
    Route("POST", "/orders", create_order, "Submit an order", 201, OrderRef, OrderCreate,
          params=(Param("Idempotency-Key", {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                        "Repeat a submit safely: the same key and body answer the first answer"
                        " (with Idempotent-Replayed: true); another body is 422; a key still"
                        " in flight is 409. Keys are kept --idempotency-ttl seconds.", "header"),),
          statuses=(409, 422, 503), role="submit",
          ok_headers=(("Location", "the new order"),
                      ("Idempotent-Replayed", "true, on the answer of a repeated request")),
          example={"customer": "John Doe", "items": [{"name": "Monster Energy", "quantity": 2}]},
          returns="The new order's id and status (pending); Location is its address",
          answer_example={"id": _EXAMPLE_ID, "status": "pending"}),
    Route("GET", "/orders", list_orders, "List and search orders by time", 200, OrderPage,
          params=(
              Param("from", _TIME, "inclusive; RFC 3339 (without an offset: UTC)"),
              Param("to", _TIME, "exclusive; RFC 3339 (without an offset: UTC)"),
              Param("status", _STATUS),
              Param("customer", {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH,
                                 "pattern": PLAIN_PATTERN},
                    "what the customer's name starts with, in any case (Unicode casefold:"
                    " STRASSE finds Straße)"),
              Param("order", {"type": "string", "minLength": MIN_ID_TAIL,
                              "maxLength": ORDER_ID_LENGTH},
                    f"an order id, or its last {MIN_ID_TAIL} characters or more"),
              Param("sort", {"type": "string", "enum": list(_SORTS), "default": "oldest"},
                    "oldest or newest first"),
              _LIMIT,
              Param("cursor", {"type": "string",
                               "pattern": f"^{NEWEST_CURSOR}?{ORDER_ID_PATTERN[1:]}"},
                    "next_cursor of the previous page (made for the same sort)"),
          ), statuses=(400, 422, 503),
          description="Every parameter is optional and they combine (AND). A page may hold"
          " fewer than `limit` orders (even none) while `next_cursor` says more may follow: a"
          " search looks at a bounded stretch of orders per page where no index answers it.",
          returns="A page of orders, whole, with `count` and the `next_cursor` to page on (null"
          " on the last page)"),
    Route("POST", "/orders/process", trigger, "Start shipping every order pending now", 202,
          ProcessingStarted, statuses=(503,), role="operate",
          description="Moves every order pending now to processing, in slices, and answers once"
          " they are all moved or after 0.2 s, whichever comes first: the rest are moved after"
          " the answer, every one of them (unless cancelled or deleted meanwhile). `orders`"
          " counts them all, moved or still to move. Orders submitted after the call wait for"
          " the next one (or --auto-process).",
          returns="How many pending orders were taken to ship",
          answer_example={"message": "Processing started", "orders": 12}),
    Route("POST", "/orders/retry", bulk_retry, "Retry failed orders in bulk", 200, BulkRetried,
          BulkRequest, statuses=(422, 503), role="operate", description=_BULK + _RETRY_NOTE,
          example={"reason_contains": "timeout"}, returns="How many failed orders went back to"
          " pending (and, while auto-process is off, `note`)",
          answer_example={"count": 3, "dry_run": False, "note": RETRY_NOTE}),
    Route("POST", "/orders/cancel", bulk_cancel, "Cancel pending and processing orders in bulk",
          200, BulkResult, BulkRequest, statuses=(422, 503), role="operate", description=_BULK,
          example={"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"},
          returns="How many orders were cancelled",
          answer_example={"count": 5, "dry_run": False}),
    Route("GET", "/orders/stats", stats, "Orders by status, and the top failure reasons", 200,
          Stats, statuses=(503,), returns="Counts of orders by status, and the most frequent"
          " failure reasons"),
    Route("GET", "/orders/throughput", throughput,
          "Orders submitted, shipped and failed per minute, over the last 24 hours", 200,
          Throughput, statuses=(503,),
          description="Counted by the store as orders move, so every instance sharing it"
          " answers alike. The 1440 minutes ending with the current one, oldest first; a minute"
          " with nothing submitted, shipped or failed is left out."),
    Route("GET", "/orders/{id}", get_order, "One order", 200, Order, params=(_ID,),
          statuses=(404, 503), returns="The order: customer, items, status, times, its history"
          " and its shipment"),
    Route("DELETE", "/orders/{id}", delete_order, "Delete a pending order", 200, Message,
          params=(_ID,), statuses=(404, 409, 503), role="operate",
          returns="A confirmation; the order is gone",
          answer_example={"message": "Order deleted"}),
    Route("GET", "/orders/status/{id}", get_status, "The status of one order", 200, OrderRef,
          params=(_ID,), statuses=(404, 503), returns="The order's id and status",
          answer_example={"id": _EXAMPLE_ID, "status": "shipped"}),
    Route("POST", "/orders/{id}/cancel", cancel_order, "Cancel a pending or processing order",
          200, OrderRef, ActionRequest, params=(_ID,), statuses=(404, 409, 422, 503),
          role="operate", description=_REASON_BODY, body_required=False,
          example={"reason": "the customer called"}, returns="The order's id and its status"
          " now (cancelled)", answer_example={"id": _EXAMPLE_ID, "status": "cancelled"}),
    Route("POST", "/orders/{id}/retry", retry_order, "Send a failed order back to pending", 200,
          OrderRetried, ActionRequest, params=(_ID,), statuses=(404, 409, 422, 503), role="operate",
          description=_REASON_BODY + _RETRY_NOTE, body_required=False,
          example={"reason": "the carrier is back"}, returns="The order's id and its status"
          " now (pending), and, while auto-process is off, `note`",
          answer_example={"id": _EXAMPLE_ID, "status": "pending"}),
)  # fmt: skip

EVENT_ROUTES: tuple[Route[Services], ...] = (
    Route("GET", "/events", events, "Order events: a live stream, or a page of past ones", 200,
          EventPage, params=(
              Param("after", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                    "resume after this event's seq (or send Last-Event-ID)"),
              Param("Last-Event-ID", {"type": "string", "pattern": _SEQ_PATTERN},
                    "resume after this event (what EventSource sends)", "header"),
              Param("order_id", {"type": "string"}, "only this order's events"),
              Param("type", {"type": "array", "items": {"type": "string", "enum": list(_TYPES)}},
                    "only these types (repeat the parameter)"),
              Param("status", _STATUS, "only events that left the order in this status"),
              Param(_LIMIT.name, _LIMIT.schema, "with Accept: application/json"),
          ), statuses=(400, 410, 503), also_media=("text/event-stream",),
          description="With `Accept: text/event-stream` (what EventSource sends), a stream of"
          " Server-Sent Events (`id:` the seq, `event:` the type, `data:` the event as JSON),"
          " resuming after `Last-Event-ID` or `after` (without either, from now on), with a"
          " keep-alive comment every 15 s (--sse-keep-alive); a stream ends cleanly after"
          " --sse-stream-bytes, or when its reader falls too far behind, and the reader"
          " resumes. With `Accept: application/json`, a page of past events (without `after`,"
          " from the oldest kept); `next_cursor` is the `after` to poll with next. 410 when"
          " the events asked for are past --event-retention.",
          returns="A stream of Server-Sent Events, or (Accept: application/json) a page of"
          " events with the `next_cursor` to poll with"),
)  # fmt: skip

META_ROUTES: tuple[Route[Services], ...] = (
    Route("GET", "/metrics", metrics, "Metrics in the Prometheus text format", 200,
          statuses=(503,), media="text/plain", needs_service=False,
          description="Counters and histograms of this instance, and store-wide gauges (orders"
          " by status, the oldest pending order) that every instance reports alike.",
          returns="The metrics, as Prometheus text"),
    Route("GET", "/instances", instances, "The instances processing orders on this store", 200,
          InstanceList, statuses=(503,),
          description="Each instance registers when it starts and beats every"
          " --heartbeat-interval with the orders it holds and ships. `live` is false once it"
          " stopped cleanly or missed three heartbeats; such an instance is listed for an hour"
          " after its last heartbeat, then forgotten. Live ones first, then by name."),
    Route("GET", "/healthz", healthz, "Liveness: the process answers", 200, Health, role=None,
          needs_service=False, returns="`ok` while the process answers",
          answer_example={"status": "ok"}),
    Route("GET", "/readyz", readyz, "Readiness: the store answers and the service is not"
          " stopping", 200, Readiness, statuses=(503,), role=None,
          description="`auto_process`: whether pending orders ship by themselves"
          " (--auto-process); when false they wait for POST /orders/process.",
          returns="`ready` while the store answers and the service takes work, and whether"
          " auto-process is on", answer_example={"status": "ready", "auto_process": False}),
)  # fmt: skip
