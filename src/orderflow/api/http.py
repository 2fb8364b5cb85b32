"""The small request and response shapes the handlers see, whichever server protocol (RSGI or
ASGI) carried the request, and the rules for reading a body and a query string."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

import msgspec

from orderflow.api.errors import HTTPProblem, bad_query, problem_from_validation
from orderflow.api.schemas import MAX_BODY_BYTES
from orderflow.api.validation import every_body_error

JSON = ("content-type", "application/json")
PROBLEM_JSON = ("content-type", "application/problem+json")
# Every answer carries it, first: the header lists below and the handlers' own start with it,
# and the app adds it to a list that does not (at the cost of a copy).
NOSNIFF = ("x-content-type-options", "nosniff")
_JSON_ONLY = [NOSNIFF, JSON]  # shared: a response's headers are replaced, never changed in place
_encode = msgspec.json.Encoder().encode


class Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any:
        """The value of header `key` (lower case), or `default`."""


class BodyReader(Protocol):
    async def read(self, request: Request) -> bytes:
        """The body of `request`, read with the rules of `Request.body`."""


class Request(msgspec.Struct, gc=False):
    """One request: method, the path (as the server gives it), the raw query string, the
    headers, the path parameters of its route, and a way to read the body once."""

    method: str
    path: str
    query: str
    headers: Headers
    read_all: Callable[[], Awaitable[bytes]]  # the server's own way to read the whole body
    reader: BodyReader
    params: tuple[str, ...] = ()
    role: str | None = None  # the role of the token it carried, when auth is on
    route: str = ""  # the template of the route it matched (for the access log)
    began: float = 0.0  # when its answer began (perf_counter)

    async def body(self) -> bytes:
        """The body, at most MAX_BODY_BYTES (else 413), all of what Content-Length announced
        (else 400), within the idle timeout (else 408)."""
        return await self.reader.read(self)

    async def json(self, decode: Callable[[bytes], Any]) -> Any:
        """The body as JSON decoded by `decode` (a msgspec decoder): 415 unless the body is
        JSON, 400 unless it parses, 422 naming the field unless it is valid."""
        content_type = self.headers.get("content-type")
        if content_type is None or not is_json(content_type):
            raise HTTPProblem("unsupported-media-type", "send the body as application/json")
        body = await self.reader.read(self)
        try:
            return decode(body)
        except msgspec.ValidationError as exc:
            problem = problem_from_validation(exc)
            cls = _decoded_type(decode)
            if cls is not None:  # only now, every error: a valid body never pays for it
                problem = every_body_error(problem, cls, body)
            raise problem from None
        except msgspec.DecodeError as exc:
            raise HTTPProblem("bad-request", f"malformed JSON: {exc}") from None
        except UnicodeDecodeError:
            raise HTTPProblem("bad-request", "the body is not UTF-8") from None

    def query_params(
        self, allowed: tuple[str, ...], repeatable: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The query's parameters: each in `allowed` at most once (those in `repeatable` as a
        list); anything else is a 400 naming it."""
        params: dict[str, Any] = {}
        if not self.query:
            return params
        for key, value in query_pairs(self.query):
            if key in repeatable:
                params.setdefault(key, []).append(value)
            elif key not in allowed:
                names = ", ".join((*allowed, *repeatable))
                raise bad_query(
                    key, f"not a parameter (use {names})" if names else "no parameters here"
                )
            elif key in params:
                raise bad_query(key, "given more than once")
            else:
                params[key] = value
        return params


def _decoded_type(decode: Callable[[bytes], Any]) -> Any:
    """The type a msgspec decoder's `decode` method decodes to (None for another callable)."""
    return getattr(getattr(decode, "__self__", None), "type", None)


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a query string, as `urllib.parse.parse_qsl` reads them (with
    blank values kept); a 400 unless it decodes as UTF-8."""
    if "%" in query or "+" in query:
        try:
            return parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise HTTPProblem("bad-request", "the query string is not UTF-8") from None
    return [part.partition("=")[::2] for part in query.split("&") if part]  # the usual case


class Response(msgspec.Struct, gc=False):
    """What a handler answers: a status, a body (or a stream of chunks), headers (`NOSNIFF`
    first, or the app copies them to put it there)."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = msgspec.field(default_factory=lambda: _JSON_ONLY)
    stream: AsyncIterator[bytes] | None = None


def json_response(status: int, value: Any, *extra: tuple[str, str]) -> Response:
    return Response(status, _encode(value), [NOSNIFF, JSON, *extra] if extra else _JSON_ONLY)


def problem_response(problem: HTTPProblem) -> Response:
    return Response(
        problem.problem.status,
        _encode(problem.problem),
        [NOSNIFF, PROBLEM_JSON, *problem.headers],
    )


def is_json(content_type: str) -> bool:
    """application/json, or a structured +json type (application/problem+json, say)."""
    if content_type == "application/json":  # the usual case, without parsing
        return True
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def no_body(request: Request) -> bool:
    """Whether `request` comes without a body, for a route whose body is optional: no
    Content-Type nor Content-Length, or a Content-Length of 0 (a client may send its
    Content-Type with no body)."""
    length = request.headers.get("content-length")
    return length == "0" or (length is None and request.headers.get("content-type") is None)


def content_length(headers: Headers) -> int | None:
    """The announced body length; 400 when it is not a number."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise HTTPProblem("bad-request", "Content-Length is not a number")
    return int(value)


def too_large() -> HTTPProblem:
    return HTTPProblem("body-too-large", f"the body must be at most {MAX_BODY_BYTES} bytes")


def cut_short(received: int, announced: int) -> HTTPProblem:
    return HTTPProblem(
        "bad-request", f"the body ended after {received} of the {announced} bytes announced"
    )


def timed_out(seconds: float) -> HTTPProblem:
    return HTTPProblem("request-timeout", f"the body did not arrive within {seconds:g} s")
