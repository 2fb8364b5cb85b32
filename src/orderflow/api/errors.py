"""The one error shape, application/problem+json (RFC 9457), and the tables behind it: every
problem type (each has a page at its `type` address), and which exception maps to which.
"""

from __future__ import annotations

import re

import msgspec

from orderflow.api.schemas import MAX_BODY_BYTES, FieldError, Problem
from orderflow.errors import (
    Gone,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InvalidOrder,
    NotFound,
    OrderConflict,
    OrderflowError,
    OutcomeUnknown,
    ShuttingDown,
    StoreRefusedData,
    StoreUnavailable,
)

PROBLEM_BASE = "/problems/"


class ProblemType(msgspec.Struct, frozen=True):
    status: int
    title: str
    description: str


PROBLEMS: dict[str, ProblemType] = {
    "bad-request": ProblemType(
        400,
        "Bad request",
        "The request is malformed: a query parameter, a header or a body the service cannot "
        "read (not JSON, not UTF-8, shorter than its Content-Length). Fix the request; "
        "nothing was changed.",
    ),
    "unauthorized": ProblemType(
        401,
        "Unauthorized",
        "The request carries no bearer token, or one the service does not know. Send "
        "`Authorization: Bearer <token>`.",
    ),
    "forbidden": ProblemType(
        403,
        "Forbidden",
        "The token's role does not allow this route, or a browser page from an origin not in "
        "--allowed-origins tried to change something.",
    ),
    "not-found": ProblemType(
        404,
        "Not found",
        "No such route, or no such order (or other resource).",
    ),
    "method-not-allowed": ProblemType(
        405,
        "Method not allowed",
        "The route exists, not with this method; the Allow header lists the methods it takes.",
    ),
    "request-timeout": ProblemType(
        408,
        "Request timeout",
        "The body did not arrive within --http-idle-timeout.",
    ),
    "conflict": ProblemType(
        409,
        "Conflict",
        "The order is not in a status that allows this (cancel a shipped order, delete one "
        "that is not pending, retry one that did not fail).",
    ),
    "idempotency-in-flight": ProblemType(
        409,
        "Request in flight",
        "A request with this Idempotency-Key is still being processed; retry it once that one "
        "has answered.",
    ),
    "gone": ProblemType(
        410,
        "Gone",
        "What was asked for is no longer kept (events older than --event-retention).",
    ),
    "body-too-large": ProblemType(
        413,
        "Body too large",
        f"The body is over {MAX_BODY_BYTES // 1024} KiB.",
    ),
    "unsupported-media-type": ProblemType(
        415,
        "Unsupported media type",
        "Send the body as application/json.",
    ),
    "misdirected-request": ProblemType(
        421,
        "Misdirected request",
        "The Host header names a host this service does not answer for (see --allowed-hosts).",
    ),
    "invalid-request": ProblemType(
        422,
        "Invalid request",
        "The body is JSON (or a query parameter is read) but breaks a rule; `errors` names each"
        " offending field.",
    ),
    "idempotency-mismatch": ProblemType(
        422,
        "Idempotency key reused",
        "This Idempotency-Key was used with a different request body; use a new key for a new "
        "request.",
    ),
    "internal-error": ProblemType(
        500,
        "Internal error",
        "An unexpected error; it is logged with its traceback.",
    ),
    "store-unavailable": ProblemType(
        503,
        "Store unavailable",
        "The order store cannot be reached; nothing was changed. Retry after the time Retry- "
        "After says.",
    ),
    "outcome-unknown": ProblemType(
        503,
        "Outcome unknown",
        "The store went away while the change was being written: it may or may not have been "
        "made. Look before repeating it, or repeat it with the same Idempotency-Key, which is "
        "always safe.",
    ),
    "shutting-down": ProblemType(
        503,
        "Shutting down",
        "The service is stopping and takes no new work; nothing was changed.",
    ),
}


class HTTPProblem(Exception):
    """A problem answered as it is: found by the HTTP layer, or mapped from an exception."""

    def __init__(
        self,
        kind: str,
        detail: str,
        errors: list[FieldError] | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        problem = PROBLEMS[kind]
        self.problem = Problem(PROBLEM_BASE + kind, problem.title, problem.status, detail, errors)
        self.headers = headers or []


# Most specific first: the first class the error is an instance of decides.
_KIND_FOR: tuple[tuple[type[OrderflowError], str], ...] = (
    (NotFound, "not-found"),
    (IdempotencyMismatch, "idempotency-mismatch"),
    (InvalidOrder, "invalid-request"),
    (IdempotencyInFlight, "idempotency-in-flight"),
    (OrderConflict, "conflict"),
    (Gone, "gone"),
    (OutcomeUnknown, "outcome-unknown"),
    (StoreUnavailable, "store-unavailable"),
    (StoreRefusedData, "internal-error"),  # a value the service let through: a bug
    (ShuttingDown, "shutting-down"),
)
_RETRY_AFTER = [("retry-after", "1")]
_UNEXPECTED = "An unexpected error occurred."


def problem_from_error(exc: OrderflowError) -> HTTPProblem:
    """The problem `exc` is answered as; a 500 says no more than that (its traceback is
    logged)."""
    for cls, kind in _KIND_FOR:
        if isinstance(exc, cls):
            status = PROBLEMS[kind].status
            if status == 500:
                break
            headers = _RETRY_AFTER if status == 503 else None
            return HTTPProblem(kind, exc.message, headers=headers)
    return HTTPProblem("internal-error", _UNEXPECTED)


def problem_from_validation(exc: msgspec.ValidationError) -> HTTPProblem:
    """A 422 naming the offending field, from msgspec's "message - at `$.path`" text."""
    message, _, where = str(exc).partition(" - at `")
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    name, message = _field_named_in(message)
    field = ".".join(part for part in (path, name) if part) or "body"
    return invalid([FieldError(field, message)])


def invalid(errors: list[FieldError], kind: str = "invalid-request") -> HTTPProblem:
    """A 422 (or another problem `kind`) naming each of `errors`; `detail` says them all."""
    detail = "; ".join(f"{error.field}: {error.message}" for error in errors)
    return HTTPProblem(kind, detail, errors)


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


def bad_query(field: str, message: str) -> HTTPProblem:
    return HTTPProblem("bad-request", f"{field}: {message}", [FieldError(field, message)])


def invalid_query(field: str, message: str) -> HTTPProblem:
    """A 422: a query parameter read well, whose value breaks a rule (a search too short)."""
    return HTTPProblem("invalid-request", f"{field}: {message}", [FieldError(field, message)])
