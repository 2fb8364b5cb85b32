"""HttpShipper against a real receiver: an aiohttp server on 127.0.0.1 in the test's own loop."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from orderflow import __version__
from orderflow.domain import Item, Parcel
from orderflow.shippers.http import HttpShipper
from orderflow.shipping import MAX_RESULT_BYTES, PermanentFailure, RetryableFailure
from tests.conftest import make_order
from tests.helpers import free_port, self_signed, ship_context
from tests.receivers import SECRET, Received, Receiver, replying

ORDER = make_order(items=(Item("Widget", 2), Item("Gadget", 1)))
PARCEL = Parcel(ORDER.id, order=ORDER)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver that answers 200 (tests change its `answer`); an answer is cancelled when the
    shipper goes away, so a test can observe the disconnect (`hang`)."""
    receiver = await Receiver(answer=replying(200), cancel_on_disconnect=True).start()
    try:
        yield receiver
    finally:
        await receiver.close()
    assert not receiver.failures, receiver.failures


@pytest.fixture
async def shipper(receiver: Receiver) -> AsyncIterator[HttpShipper]:
    shipper = HttpShipper(receiver.url, SECRET, timeout_s=5)
    try:
        yield shipper
    finally:
        await shipper.close()


async def test_every_request_is_signed_and_carries_the_attempt_and_deadline(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    first, second = ship_context(attempt=1), ship_context(attempt=2)
    receiver.answer = replying(503)
    with pytest.raises(RetryableFailure):
        await shipper.ship(PARCEL, first)
    receiver.answer = replying(200)
    await shipper.ship(PARCEL, second)

    assert len(receiver.received) == 2
    for received, sent in zip(receiver.received, (first, second), strict=True):
        headers, body = received.headers, received.raw
        assert Webhook(SECRET).verify(body, headers) == msgspec.json.decode(
            msgspec.json.encode(ORDER)
        )
        assert headers["webhook-id"] == ORDER.id  # the same on every attempt
        assert headers["orderflow-attempt"] == str(sent.attempt)
        assert datetime.fromisoformat(headers["orderflow-deadline"]) == sent.deadline
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"] == f"orderflow/{__version__}"
        assert b" " not in body  # compact JSON


async def test_a_signature_with_another_secret_does_not_verify(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    await shipper.ship(PARCEL, ship_context())
    headers, body = receiver.received[0].headers, receiver.received[0].raw
    other = "whsec_" + "A" * 32
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(body, headers)


async def test_2xx_with_a_json_object_is_the_result(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    receiver.answer = replying(201, b'{"carrier": "acme", "tracking": "T1"}')
    assert await shipper.ship(PARCEL, ship_context()) == {"carrier": "acme", "tracking": "T1"}


@pytest.mark.parametrize("body", [b"", b"OK", b"<html>thanks</html>", b"null"])
async def test_2xx_without_a_json_object_is_shipped_with_no_result(
    receiver: Receiver, shipper: HttpShipper, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer = replying(200, body)
    assert await shipper.ship(PARCEL, ship_context()) is None
    assert caplog.records == []


@pytest.mark.parametrize(
    ("body", "warning"),
    [
        (b"[1, 2]", "with a JSON array, not an object"),
        (b'"tracking"', "with a JSON string, not an object"),
        (
            b'{"tracking": "' + b"x" * MAX_RESULT_BYTES + b'"}',
            f"with over {MAX_RESULT_BYTES} bytes",
        ),
    ],
    ids=["array", "string", "oversized"],
)
async def test_2xx_with_json_not_a_small_object_is_shipped_with_a_warning(
    receiver: Receiver,
    shipper: HttpShipper,
    body: bytes,
    warning: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.answer = replying(200, body)
    with caplog.at_level(logging.WARNING, logger="test"):
        assert await shipper.ship(PARCEL, ship_context()) is None
    assert f"receiver answered HTTP 200 {warning}: shipped, no result stored" in caplog.text


async def test_2xx_whose_body_breaks_off_is_shipped_with_a_warning(
    receiver: Receiver, shipper: HttpShipper, caplog: pytest.LogCaptureFixture
) -> None:
    async def break_off(received: Received) -> web.StreamResponse:
        request = received.request
        response = web.StreamResponse(status=200)
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"tracking"')
        assert request.transport is not None
        request.transport.close()
        return response

    receiver.answer = break_off
    with caplog.at_level(logging.WARNING, logger="test"):
        assert await shipper.ship(PARCEL, ship_context()) is None
    assert "then its body failed" in caplog.text


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_4xx_is_a_permanent_failure_with_the_status_and_body_start(
    receiver: Receiver, shipper: HttpShipper, status: int
) -> None:
    receiver.answer = replying(status, b'{"error": "bad address"}\n' + b"z" * 1000)
    with pytest.raises(PermanentFailure) as caught:
        await shipper.ship(PARCEL, ship_context())
    reason = str(caught.value)
    assert reason.startswith(f'HTTP {status} from receiver: {{"error": "bad address"}} zzz')
    assert "\n" not in reason
    assert len(reason) < 300


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503])
async def test_busy_statuses_and_5xx_are_retryable(
    receiver: Receiver, shipper: HttpShipper, status: int
) -> None:
    receiver.answer = replying(status, b"try later")
    with pytest.raises(RetryableFailure) as caught:
        await shipper.ship(PARCEL, ship_context())
    assert str(caught.value) == f"HTTP {status} from receiver: try later"
    assert caught.value.retry_after_s is None


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds_is_honoured(
    receiver: Receiver, shipper: HttpShipper, status: int
) -> None:
    receiver.answer = replying(status, headers={"Retry-After": "2"})
    with pytest.raises(RetryableFailure) as caught:
        await shipper.ship(PARCEL, ship_context())
    assert caught.value.retry_after_s == 2


async def test_retry_after_as_an_http_date_is_honoured(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    receiver.answer = replying(503, headers={"Retry-After": when})
    with pytest.raises(RetryableFailure) as caught:
        await shipper.ship(PARCEL, ship_context())
    assert caught.value.retry_after_s is not None
    assert 20 <= caught.value.retry_after_s <= 31


@pytest.mark.parametrize(
    ("value", "expected"),
    [("100000", 300), ("Wed, 01 Jan 2100 00:00:00 GMT", 300), ("0", 0), ("soon", None)],
)
async def test_retry_after_is_capped_and_a_bad_one_ignored(
    receiver: Receiver, shipper: HttpShipper, value: str, expected: float | None
) -> None:
    receiver.answer = replying(429, headers={"Retry-After": value})
    with pytest.raises(RetryableFailure) as caught:
        await shipper.ship(PARCEL, ship_context())
    assert caught.value.retry_after_s == expected


async def test_a_redirect_is_not_followed(receiver: Receiver, shipper: HttpShipper) -> None:
    receiver.answer = replying(302, headers={"Location": "/elsewhere"})
    with pytest.raises(PermanentFailure, match=r"^HTTP 302 from receiver: redirects are not"):
        await shipper.ship(PARCEL, ship_context())
    assert len(receiver.received) == 1


async def test_a_receiver_that_hangs_past_the_timeout_fails_the_attempt(
    receiver: Receiver,
) -> None:
    receiver.answer = receiver.hang
    shipper = HttpShipper(receiver.url, SECRET, timeout_s=0.2)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(RetryableFailure, match=r"^timeout after 0\.2s$"):
                await shipper.ship(PARCEL, ship_context())
            await receiver.disconnected.wait()
    finally:
        await shipper.close()


async def test_the_attempts_deadline_bounds_the_timeout(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    receiver.answer = receiver.hang
    async with asyncio.timeout(5):
        with pytest.raises(RetryableFailure, match=r"^timeout after 0\.[0-3]"):
            await shipper.ship(PARCEL, ship_context(deadline_s=0.3))


async def test_a_passed_deadline_sends_nothing(receiver: Receiver, shipper: HttpShipper) -> None:
    with pytest.raises(RetryableFailure, match="deadline passed"):
        await shipper.ship(PARCEL, ship_context(deadline_s=-1))
    assert receiver.received == []


async def test_cancelling_the_call_closes_the_connection(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    receiver.answer = receiver.hang
    call = asyncio.create_task(shipper.ship(PARCEL, ship_context()))
    async with asyncio.timeout(5):
        await receiver.waiting.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await receiver.disconnected.wait()


async def test_connections_are_reused(receiver: Receiver, shipper: HttpShipper) -> None:
    peers: set[Any] = set()

    async def note_peer(received: Received) -> web.StreamResponse:
        request = received.request
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response()

    receiver.answer = note_peer
    for _ in range(5):
        await shipper.ship(PARCEL, ship_context())
    assert len(peers) == 1


async def test_a_refused_connection_is_retryable() -> None:
    port = free_port()  # nobody listens on it
    shipper = HttpShipper(f"http://127.0.0.1:{port}/", SECRET, timeout_s=5)
    try:
        with pytest.raises(RetryableFailure, match="connection refused"):
            await shipper.ship(PARCEL, ship_context())
    finally:
        await shipper.close()


async def test_the_receiver_closing_without_an_answer_is_retryable(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    async def drop(received: Received) -> web.StreamResponse:
        request = received.request
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError

    receiver.answer = drop
    with pytest.raises(RetryableFailure, match="closed the connection"):
        await shipper.ship(PARCEL, ship_context())


async def test_an_https_receiver_is_verified_against_the_given_ssl_context(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    receiver = await Receiver(answer=replying(200), ssl_context=server_side).start()
    url = receiver.url_for("/hooks")
    trusting = HttpShipper(
        url, SECRET, timeout_s=5, ssl_context=ssl.create_default_context(cafile=cert)
    )
    default = HttpShipper(url, SECRET, timeout_s=5)
    try:
        assert await trusting.ship(PARCEL, ship_context()) is None
        with pytest.raises(RetryableFailure, match="certificate"):
            await default.ship(PARCEL, ship_context())
        assert len(receiver.received) == 1
    finally:
        await trusting.close()
        await default.close()
        await receiver.close()
    assert not receiver.failures


async def test_2xx_whose_body_times_out_is_shipped_with_a_warning(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    async def stall(received: Received) -> web.StreamResponse:
        request = received.request
        response = web.StreamResponse(status=200)
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"tracking"')
        await receiver.release.wait()
        return response

    receiver.answer = stall
    shipper = HttpShipper(receiver.url, SECRET, timeout_s=0.5, result_wait_s=1)
    try:
        with caplog.at_level(logging.WARNING, logger="test"):
            assert await shipper.ship(PARCEL, ship_context()) is None
        assert (
            "receiver answered HTTP 200, then its body failed (timeout after 1s reading the"
            " body): shipped, no result stored"
        ) in caplog.text
    finally:
        await shipper.close()


async def test_a_non_2xx_whose_body_breaks_off_is_retryable(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    async def break_off(received: Received) -> web.StreamResponse:
        request = received.request
        response = web.StreamResponse(status=404)
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"not fo")
        assert request.transport is not None
        request.transport.close()
        return response

    receiver.answer = break_off
    with pytest.raises(RetryableFailure, match=r"closed the connection .*\(after HTTP 404\)$"):
        await shipper.ship(PARCEL, ship_context())


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "expected 'whsec_'"),
        ("whsec_", "expected 'whsec_' and the base64"),
        ("whsec_not base64!", "expected 'whsec_' and the base64"),
        ("whsec_MfKQ9", "expected 'whsec_' and the base64"),
        ("whsec_QUJDREVGR0g=", "of a 24 to 64 byte key"),  # 8 bytes: too short a key
    ],
)
def test_a_bad_secret_is_refused_without_being_echoed(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        HttpShipper("https://example.test/", secret, timeout_s=5)
    if key := secret.removeprefix("whsec_"):
        assert key not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://example.test/", "example.test/hooks", "http:///x"])
def test_a_bad_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="expected http://"):
        HttpShipper(url, SECRET, timeout_s=5)


def test_a_url_with_a_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^URL 'http://example\.test:99999/': Port out of range"):
        HttpShipper("http://example.test:99999/", SECRET, timeout_s=5)


def test_a_url_with_credentials_is_refused_without_being_echoed() -> None:
    with pytest.raises(ValueError, match="user:password@ is not supported") as caught:
        HttpShipper("https://ada:hunter2@example.test/", SECRET, timeout_s=5)
    assert "hunter2" not in str(caught.value)


async def test_the_path_and_query_are_sent_escaped(receiver: Receiver) -> None:
    targets: list[str] = []

    async def note_target(received: Received) -> web.StreamResponse:
        request = received.request
        targets.append(request.raw_path)
        return web.Response()

    receiver.answer = note_target
    url = receiver.url_for("/hooks/orders") + "/é x?shop=a b&n=1%2F2#frag"
    shipper = HttpShipper(url, SECRET, timeout_s=5)
    try:
        await shipper.ship(PARCEL, ship_context())
    finally:
        await shipper.close()
    assert targets == ["/hooks/orders/%C3%A9%20x?shop=a%20b&n=1%2F2"]


async def test_a_2xx_head_marks_the_order_taken_before_its_body_is_read(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    taken = asyncio.Event()

    async def head_then_body(received: Received) -> web.StreamResponse:
        request = received.request
        response = web.StreamResponse(status=201)
        response.content_length = 17
        await response.prepare(request)
        await taken.wait()  # the shipper said "taken" with no body yet
        await response.write(b'{"tracking": "T"}')
        return response

    receiver.answer = head_then_body
    assert await shipper.ship(PARCEL, ship_context(mark_taken=taken.set)) == {"tracking": "T"}


@pytest.mark.parametrize("status", [302, 404, 429, 503])
async def test_an_answer_other_than_2xx_does_not_mark_the_order_taken(
    receiver: Receiver, shipper: HttpShipper, status: int
) -> None:
    takes: list[None] = []
    receiver.answer = replying(status)
    with pytest.raises((PermanentFailure, RetryableFailure)):
        await shipper.ship(PARCEL, ship_context(mark_taken=lambda: takes.append(None)))
    assert takes == []


async def test_a_2xx_whose_head_is_over_its_bounds_is_retryable_and_not_taken(
    receiver: Receiver, shipper: HttpShipper
) -> None:
    """A head past the bounds is no answer: the order is not taken, the attempt is retried."""
    takes: list[None] = []
    receiver.answer = replying(200, headers={f"x-h{n}": "1" for n in range(120)})
    with pytest.raises(RetryableFailure, match=r"^the answer has over 100 headers$"):
        await shipper.ship(PARCEL, ship_context(mark_taken=lambda: takes.append(None)))
    assert takes == []


async def test_a_2xx_at_the_deadline_gets_result_wait_s_for_its_body(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The head comes within the call's timeout, the body after it: it is read."""
    body_sent = asyncio.Event()

    async def late(received: Received) -> web.StreamResponse:
        request = received.request
        response = web.StreamResponse(status=200)
        response.content_length = 17
        await response.prepare(request)
        await asyncio.sleep(1.5)  # the call's own timeout_s is over by now
        await response.write(b'{"tracking": "T"}')
        body_sent.set()
        return response

    receiver.answer = late
    shipper = HttpShipper(receiver.url, SECRET, timeout_s=1, result_wait_s=30)
    try:
        assert await shipper.ship(PARCEL, ship_context()) == {"tracking": "T"}
        assert body_sent.is_set()
    finally:
        await shipper.close()
