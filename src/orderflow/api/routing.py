"""Routes: what one endpoint is (`Route`, its `Param`s), and the `Router` that finds the routes
of a request's path. The tables are the features' own (`api/routes.py`, `webhooks/routes.py`,
the dashboard's); this is what they are made of.

A handler is called as ``await handler(services, request)``: `services` is whatever the app was
handed to pass on (the running service's face), and each table says, in its handlers' first
parameter, the Protocol it needs of it. A `Route` is contravariant in that type, so the app
that serves several tables type-checks only when its services satisfy every table's Protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

from orderflow.api.http import Request, Response
from orderflow.metrics import METRICS, RouteStats

S = TypeVar("S", contravariant=True)

ROLES = ("read", "submit", "operate")  # each may do what the ones before it may

Handler = Callable[[S, Request], Awaitable[Response]]


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter, as the OpenAPI document shows it."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    where: str = "query"
    required: bool = False


# The OpenAPI document's tags, in its order: each route has one (`tag_of` when not given).
TAGS: dict[str, str] = {
    "orders": "Submit orders, and read them, their status and the stats",
    "operate": "Steer the orders: process, cancel, retry, delete (role operate)",
    "events": "What happens to orders, as a stream or in pages",
    "webhooks": "Subscriptions that POST order events to a URL",
    "meta": "Health, readiness, metrics, and the pages that describe the service",
}


def tag_of(path: str, role: str | None) -> str:
    """The tag of a route that names none: by the first segment of its path, and an order
    route that takes the operate role is in `operate`."""
    first = path.split("/")[1]
    if first == "orders":
        return "operate" if role == "operate" else "orders"
    return first if first in TAGS else "meta"


@dataclass(frozen=True)
class Route(Generic[S]):
    """One endpoint, whose handler takes services of type `S`.

    Attributes:
        statuses: what it may answer besides `ok`, beyond what every route may (the app adds
            405, 421, 401 and 403 where auth applies, and 400/408/413/415 where a body is read).
        role: who may call it when auth is on (None: anyone, even then).
        media: the answer's content type, when not JSON.
        needs_service: answered 503 while the service is not running.
        tag: its group in the OpenAPI document, one of `TAGS` (`tag_of` its path when empty).
        returns: what its success answer holds, for the document (the answer type's docstring,
            or the summary, when empty).
        answer_example: an example of that answer (made from its schema when None).
    """

    method: str
    path: str
    handler: Handler[S]
    summary: str
    ok: int = 200
    answer: Any = None
    body: Any = None
    params: tuple[Param, ...] = ()
    statuses: tuple[int, ...] = ()
    role: str | None = "read"
    media: str = "application/json"
    description: str = ""
    example: Any = None
    body_required: bool = True
    needs_service: bool = True
    also_media: tuple[str, ...] = ()
    ok_headers: tuple[tuple[str, str], ...] = ()  # (name, description) of the answer's headers
    tag: str = ""
    returns: str = ""
    answer_example: Any = None
    stats: RouteStats = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", METRICS.route(self.path))
        if not self.tag:
            object.__setattr__(self, "tag", tag_of(self.path, self.role))
        if self.tag not in TAGS:
            raise ValueError(f"{self.method} {self.path}: tag {self.tag!r} is not one of {TAGS}")
        if self.role not in (None, *ROLES):
            raise ValueError(f"{self.method} {self.path}: role {self.role!r} is not one of {ROLES}")


class Router:
    """Finds the routes of a path. A path has at most one parameter, in its last segment
    (``/orders/{id}``) or the one before (``/orders/{id}/cancel``), so every lookup is one or
    two `rpartition`s and dict lookups; a literal segment wins over a parameter
    (``/orders/stats`` is not an order, ``/orders/status/{id}`` is not ``/orders/{id}/…``)."""

    def __init__(self, routes: Sequence[Route[Any]]) -> None:
        self.static: dict[str, dict[str, Route[Any]]] = {}
        self._last: dict[str, dict[str, Route[Any]]] = {}  # "/orders" → /orders/{id}
        self._middle: dict[tuple[str, str], dict[str, Route[Any]]] = {}  # ("/orders", "cancel")
        for route in routes:
            head, _, tail = route.path.rpartition("/")
            if "{" not in route.path:
                methods = self.static.setdefault(route.path, {})
            elif tail.startswith("{") and "{" not in head:
                methods = self._last.setdefault(head, {})
            else:
                parent, _, param = head.rpartition("/")
                if not param.startswith("{") or "{" in parent or "{" in tail:
                    raise ValueError(
                        f"{route.path}: one parameter, in one of the last two segments"
                    )
                methods = self._middle.setdefault((parent, tail), {})
            methods[route.method] = route
        every = [*self.static.values(), *self._last.values(), *self._middle.values()]
        self.allow = {
            id(methods): ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            for methods in every
        }

    def find(self, path: str) -> tuple[dict[str, Route[Any]], tuple[str, ...]] | None:
        methods = self.static.get(path)
        if methods is not None:
            return methods, ()
        head, _, tail = path.rpartition("/")
        methods = self._last.get(head)
        if methods is not None and tail:
            return methods, (unquote(tail) if "%" in tail else tail,)
        parent, _, param = head.rpartition("/")
        methods = self._middle.get((parent, tail))
        if methods is not None and param:
            return methods, (unquote(param) if "%" in param else param,)
        return None
