"""`HttpShipper`: ships an order by POSTing it to a receiver's http(s):// URL, signed per the
Standard Webhooks specification; the receiver's answer decides what the attempt became.

    2xx                          shipped; a JSON object body of at most MAX_RESULT_BYTES is the
                                 result; an empty, non-JSON or null body is no result (None); a
                                 body that is JSON but not an object, is too long, breaks off or
                                 takes over `result_wait_s` after the head is no result and one
                                 warning line (the receiver took the order: a retry would ship
                                 it twice)
    3xx                          PermanentFailure: redirects are never followed
    408 409 425 429, 5xx         RetryableFailure, with the receiver's Retry-After (capped)
    any other 4xx                PermanentFailure, with the status and the start of the body
    timeout, connection error    RetryableFailure
    a head over its bounds       RetryableFailure (HeadTooLarge, see httpconnection.py)
    other statuses (1xx)         RetryableFailure

The moment a 2xx head is in, the attempt's `ShipContext.mark_taken` is called (in the parser's
callback: no other task runs in between), so the attempt's deadline can no longer fail it.

Every attempt at one order carries the same ``webhook-id`` (the order id), so the receiver can
de-duplicate; ``orderflow-attempt`` and ``orderflow-deadline`` tell it which attempt this is and
when it will be abandoned. The client is `HttpClient` (httpclient.py): at 256 calls in flight on
this project's 2-core machine httpx spent 2 to 5 ms of CPU per call, aiohttp 0.3 to 0.55 ms, and
it 0.11 to 0.17 ms.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec
from standardwebhooks import Webhook

from orderflow.domain import Parcel
from orderflow.shippers.httpclient import HttpClient, HttpClientError, Timeout
from orderflow.shipping import (
    MAX_RESULT_BYTES,
    RESULT_WAIT_S,
    PermanentFailure,
    RetryableFailure,
    ShipContext,
)
from orderflow.signing import body_start, check_secret, retry_after_s, signed_headers

_SECRET_PREFIX = "whsec_"
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
# What a URL's path and query may hold unescaped (RFC 3986), "%" for what is escaped already.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class HttpShipper:
    """POSTs each order to `url`, signed with `secret`; see the module docstring for the answers.

    Args:
        url: the receiver, ``http://`` or ``https://``.
        secret: the Standard Webhooks signing key, ``whsec_`` then base64; never logged.
        timeout_s: the most one attempt may take until the answer's head, connecting included;
            an attempt also ends at its deadline (`ShipContext.deadline`), whichever comes
            first. A 2xx's body then has `result_wait_s` more (or what is left, if longer).
        max_retry_after_s: the cap on a receiver's ``Retry-After``.
        result_wait_s: how long a 2xx's body may take after its head (the order is taken
            then: past it, shipped with no result).
        ssl_context: for an https URL, the certificates to trust instead of the system's (a
            private CA, say).

    Raises:
        ValueError: a one-line message, when `url`, `secret` or a number is unusable.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout_s: float,
        max_retry_after_s: float = 300,
        result_wait_s: float = RESULT_WAIT_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        origin, self._target = _split_url(url)
        self.url = url
        if not timeout_s > 0:
            raise ValueError(f"the shipper timeout must be more than 0 s, not {timeout_s}")
        if not max_retry_after_s >= 0:
            raise ValueError(f"max_retry_after_s must be at least 0, not {max_retry_after_s}")
        self.timeout_s = timeout_s
        self.max_retry_after_s = max_retry_after_s
        self.result_wait_s = result_wait_s
        self._webhook = Webhook(check_secret(secret))
        # No cap of its own: the processor's concurrency already bounds the calls in flight,
        # and a second, smaller cap would only queue them here.
        self._client = HttpClient(origin, max_connections=None, ssl_context=ssl_context)

    async def ship(self, parcel: Parcel, context: ShipContext) -> dict[str, Any] | None:
        now = datetime.now(UTC)
        timeout_s = min(self.timeout_s, (context.deadline - now).total_seconds())
        if timeout_s <= 0:
            raise RetryableFailure("the attempt's deadline passed before the order was sent")
        body = parcel.json
        headers = signed_headers(self._webhook, parcel.id, now, body)
        headers["orderflow-attempt"] = str(context.attempt)
        headers["orderflow-deadline"] = _rfc3339(context.deadline)

        def head_in(status: int) -> None:
            if 200 <= status < 300:
                context.mark_taken()

        try:
            # A timeout or a cancellation at any await here closes the connection (it is never
            # handed back to the pool mid-request), so the receiver sees the call go away.
            response = await self._client.post(
                self._target,
                headers,
                body,
                timeout_s=timeout_s,
                max_body=MAX_RESULT_BYTES,
                body_timeout_s=self.result_wait_s,
                on_head=head_in,
            )
        except HttpClientError as exc:
            if exc.status is not None and 200 <= exc.status < 300:
                # The receiver took the order: a retry would ship it twice.
                context.log.warning(
                    "receiver answered HTTP %d, then its body failed (%s):"
                    " shipped, no result stored",
                    exc.status,
                    exc,
                )
                return None
            if isinstance(exc, Timeout):
                raise RetryableFailure(str(exc)) from None
            after = f" (after HTTP {exc.status})" if exc.status is not None else ""
            raise RetryableFailure(f"{exc}{after}") from exc
        status, answer, complete = response.status, response.body, not response.truncated
        retry_after = response.headers.get("retry-after")

        if 200 <= status < 300:
            return _result(status, answer, complete, context)
        if 300 <= status < 400:
            raise PermanentFailure(f"HTTP {status} from receiver: redirects are not followed")
        reason = f"HTTP {status} from receiver{body_start(answer, complete)}"
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise PermanentFailure(reason)
        raise RetryableFailure(
            reason, retry_after_s=retry_after_s(retry_after, self.max_retry_after_s)
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.close()


def _split_url(url: str) -> tuple[str, str]:
    """(origin, target) of an http(s) URL: ``https://host:port`` and ``/path?query``."""
    problem = "expected http://host/… or https://host/…"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (it checks the port)
    except ValueError as exc:
        raise ValueError(f"URL {url!r}: {exc}") from None
    if parts.username is not None:  # the URL itself is not echoed: it holds a password
        raise ValueError("URL: user:password@ is not supported")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"URL {url!r}: {problem}")
    target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_PATH_SAFE)
    return f"{parts.scheme}://{parts.netloc}", target


def _result(
    status: int, body: bytes, complete: bool, context: ShipContext
) -> dict[str, Any] | None:
    if not complete:
        context.log.warning(
            "receiver answered HTTP %d with over %d bytes: shipped, no result stored",
            status,
            MAX_RESULT_BYTES,
        )
        return None
    if not body:
        return None
    try:
        result = _decode(body)
    except msgspec.DecodeError:  # "OK", say: a receiver need not answer in JSON
        return None
    if result is None:
        return None
    if not isinstance(result, dict):
        context.log.warning(
            "receiver answered HTTP %d with a JSON %s, not an object: shipped, no result stored",
            status,
            _JSON_TYPES.get(type(result), type(result).__name__),
        )
        return None
    # Re-encoding can outgrow the body (1e3 becomes 1000.0); the limit is on what is stored.
    if len(_encode(result)) > MAX_RESULT_BYTES:
        context.log.warning(
            "receiver answered HTTP %d with a JSON object over %d bytes encoded:"
            " shipped, no result stored",
            status,
            MAX_RESULT_BYTES,
        )
        return None
    return result


def _rfc3339(at: datetime) -> str:
    return _encode(at)[1:-1].decode()  # msgspec writes it as the orders' own timestamps
