"""One table from exception to HTTP status, and the one error shape: application/problem+json."""

from __future__ import annotations

import re

import msgspec

from orderflow.api.schemas import FieldError, Problem
from orderflow.errors import (
    InvalidOrder,
    OrderConflict,
    OrderflowError,
    OrderNotFound,
    ShuttingDown,
    StoreUnavailable,
)

# Most specific first: the first class the error is an instance of decides.
STATUS_FOR: tuple[tuple[type[OrderflowError], int, str], ...] = (
    (OrderNotFound, 404, "Order not found"),
    (InvalidOrder, 422, "Invalid request"),
    (OrderConflict, 409, "Conflict"),
    (StoreUnavailable, 503, "Store unavailable"),
    (ShuttingDown, 503, "Shutting down"),
    (OrderflowError, 500, "Internal error"),
)


class HTTPProblem(Exception):
    """A problem found by the HTTP layer itself (bad JSON, wrong content type, unknown route)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[FieldError] | None = None,
        *,
        allow: bytes | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(_type_for(title), title, status, detail, errors)
        self.allow = allow  # for 405: the methods the route has


def _type_for(title: str) -> str:
    return "/problems/" + title.lower().replace(" ", "-")


def problem_from_error(exc: OrderflowError) -> Problem:
    for cls, status, title in STATUS_FOR:
        if isinstance(exc, cls):
            return Problem(_type_for(title), title, status, exc.message)
    raise AssertionError("unreachable: OrderflowError is in the table")  # pragma: no cover


def problem_from_validation(exc: msgspec.ValidationError, status: int, title: str) -> HTTPProblem:
    """A problem naming the offending field, from msgspec's "message - at `$.path`" text."""
    message, _, where = str(exc).partition(" - at `")
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    name, message = _field_named_in(message)
    field = ".".join(part for part in (path, name) if part) or "body"
    return HTTPProblem(status, title, f"{field}: {message}", [FieldError(field, message)])


_NAMED_FIELD = re.compile(r"Object (?:missing required|contains unknown) field `([^`]+)`")


def _field_named_in(message: str) -> tuple[str, str]:
    """(the field `message` names, if any; the message): msgspec names a missing or unknown
    field in backquotes, the domain's checks say "field: problem"."""
    named = _NAMED_FIELD.fullmatch(message)
    if named is not None:
        return named.group(1), message
    name, colon, problem = message.partition(": ")
    if colon and name.isidentifier():
        return name, problem
    return "", message


INTERNAL_ERROR = Problem(
    _type_for("Internal error"), "Internal error", 500, "An unexpected error occurred."
)
