"""Hostile values on a real `orderflow serve`, in memory and on PostgreSQL: client times that
have no UTC time, control characters in reasons, and shippers whose words and results hold what
PostgreSQL cannot store (a NUL, a lone surrogate). Each is a clear 4xx that changes nothing, or
is stored clean; never a 500, never a 503 for an outage there was not."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import eventually_sync
from tests.helpers import submit
from tests.receivers import SECRET, Receiver, replying
from tests.servers import Server

pytestmark = pytest.mark.e2e

SHIPPER = "python:tests.e2e.unstorable_shipper:ship"
CLEAN_RESULT = {"x": "a\ufffdb", "k\ufffd": ["\ufffd"]}


def store_errors(client: httpx.Client) -> dict[str, float]:
    """`orderflow_store_errors_total` by kind, from /metrics."""
    found = re.findall(
        r'^orderflow_store_errors_total\{kind="(\w+)"\} (\S+)$', client.get("/metrics").text, re.M
    )
    return {kind: float(value) for kind, value in found}


def assert_clean_log(server: Server) -> None:
    """No traceback, and nothing in the log that breaks a line."""
    raw = server.log_path.read_bytes()
    assert b"Traceback" not in raw, raw.decode(errors="replace")
    assert b"\x00" not in raw


# -- instants --------------------------------------------------------------------------------

_OFFSETS = st.one_of(
    st.just("Z"),
    st.just(""),
    st.builds(
        lambda sign, hours, minutes: f"{sign}{hours:02d}:{minutes:02d}",
        st.sampled_from("+-"),
        st.integers(0, 23),
        st.integers(0, 59),
    ),
)
_EDGE_TIMES = st.builds(
    lambda day, hour, minute, offset: f"{day}T{hour:02d}:{minute:02d}:00{offset}",
    st.sampled_from(["0001-01-01", "0001-01-02", "9999-12-30", "9999-12-31"]),
    st.integers(0, 23),
    st.integers(0, 59),
    _OFFSETS,
)


def test_a_time_at_the_edge_of_the_calendar_is_read_alike_in_a_body_and_a_query(
    serve: type[Server], store_flags: tuple[str, ...]
) -> None:
    """Point 5: `POST /orders/retry {"from": "0001-01-01T00:00:00+14:00"}` answered 500 (an
    OverflowError) on both stores, where `GET /orders?from=` said 400. Fuzzed times at both
    ends of the calendar with any offset: the body's answer is 200 or a 422 naming the field,
    the query's 200 or a 400 with the very same field error, never a 500; nothing moves."""
    server = serve(*store_flags)
    [order_id] = submit(server, 1)

    with server.client() as client:

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(at=_EDGE_TIMES, field=st.sampled_from(["from", "to"]), action=st.sampled_from(
            ["retry", "cancel"]))  # fmt: skip
        def check(at: str, field: str, action: str) -> None:
            # A range that holds no order made today, whatever `at` is: nothing may move.
            other = (
                {"from": "9999-12-31T23:59:59Z"}
                if field == "to"
                else {"to": "0001-01-02T00:00:00Z"}
            )
            body = {field: at, **other}
            answer = client.post(f"/orders/{action}", json=body)
            query = client.get("/orders", params={field: at})
            assert answer.status_code in (200, 422), answer.text
            assert query.status_code in (200, 400), query.text
            assert (answer.status_code == 422) == (query.status_code == 400), (answer, query)
            if answer.status_code == 422:
                assert answer.json()["errors"] == query.json()["errors"]
                assert answer.json()["errors"][0]["field"] == field
            else:
                answer_json = answer.json()
                answer_json.pop("note", None)  # a retry notes that auto-process is off
                assert answer_json == {"count": 0, "dry_run": False}

        check()
        assert client.get(f"/orders/{order_id}").json()["status"] == "pending"
        assert store_errors(client) == {"unavailable": 0, "outcome_unknown": 0, "refused_data": 0}
    assert_clean_log(server)


# -- reasons ---------------------------------------------------------------------------------


def test_a_control_character_in_a_reason_is_a_422_on_every_store_and_changes_nothing(
    serve: type[Server], store_flags: tuple[str, ...]
) -> None:
    """Point 6: a NUL in `reason_contains` or in a cancel's reason was a 503 store-unavailable
    on PostgreSQL (with Retry-After, a store error counted) and stored as it came in memory.
    Reasons follow the name rules now: a 422 naming the field on every store, nothing stored,
    nothing counted as a store error."""
    server = serve(*store_flags)
    [order_id] = submit(server, 1)
    with server.client() as client:
        bad = [
            ("/orders/retry", {"reason_contains": "\u0000"}, "reason_contains"),
            ("/orders/cancel", {"reason_contains": "a\u0000"}, "reason_contains"),
            ("/orders/cancel", {"reason": "a\u0000b"}, "reason"),
            (f"/orders/{order_id}/cancel", {"reason": "a\u0000b"}, "reason"),
            (f"/orders/{order_id}/cancel", {"reason": "two\nlines"}, "reason"),
            (f"/orders/{order_id}/retry", {"reason": "\u0000"}, "reason"),
        ]
        for path, body, field in bad:
            answer = client.post(path, json=body)
            assert answer.status_code == 422, (path, answer.text)
            assert "retry-after" not in answer.headers
            assert answer.json()["errors"] == [
                {"field": field, "message": "must not contain control characters"}
            ]
        order = client.get(f"/orders/{order_id}").json()
        assert [entry["status"] for entry in order["history"]] == ["pending"]
        assert store_errors(client) == {"unavailable": 0, "outcome_unknown": 0, "refused_data": 0}
        cancelled = client.post(f"/orders/{order_id}/cancel", json={"reason": " customer called "})
        assert cancelled.status_code == 200
        order = client.get(f"/orders/{order_id}").json()
        assert order["history"][-1]["reason"] == "customer called"
    assert_clean_log(server)


# -- what shippers say -----------------------------------------------------------------------


def test_a_shippers_nul_is_stored_clean_and_every_order_ends(
    serve: type[Server], store_flags: tuple[str, ...]
) -> None:
    """Point 6, the worse path: a Python shipper's `PermanentFailure("a\\x00b…")`, a result with
    `\\u0000` (jsonb refuses it) and a retried attempt's message with a NUL were each refused by
    PostgreSQL as a "StoreUnavailable": the outcome writer waited the "outage" out for good, the
    order stayed processing and store errors piled up. The domain cleans what a shipper says
    now: the failure is stored with U+FFFD, the result too, and every order ends."""
    server = serve(
        *store_flags, "--shipper", SHIPPER, "--auto-process",
        "--max-attempts", "2", "--retry-backoff", "0.01",
    )  # fmt: skip
    with server.client() as client:
        ids = {}
        for customer in ("fail", "ship", "retry"):
            order = {"customer": customer, "items": [{"name": "W", "quantity": 1}]}
            ids[customer] = client.post("/orders", json=order).json()["id"]

        def ended() -> bool:
            statuses = {client.get(f"/orders/status/{i}").json()["status"] for i in ids.values()}
            return statuses <= {"shipped", "failed"}

        eventually_sync(ended, timeout_s=20)
        failed = client.get(f"/orders/{ids['fail']}").json()
        assert failed["status"] == "failed"
        assert failed["history"][-1]["reason"] == "a\ufffdb\ufffdc d"
        shipped = client.get(f"/orders/{ids['ship']}").json()
        assert (shipped["status"], shipped["shipment"]) == ("shipped", CLEAN_RESULT)
        retried = client.get(f"/orders/{ids['retry']}").json()
        assert retried["status"] == "shipped"
        notes = [entry.get("reason", "") for entry in retried["history"]]
        assert any("carrier said \ufffd" in note for note in notes), notes
        events = client.get("/events", headers={"accept": "application/json"}).json()["events"]
        data = [e["data"] for e in events if e["type"] == "order.shipped"]
        assert CLEAN_RESULT in data
        assert store_errors(client) == {"unavailable": 0, "outcome_unknown": 0, "refused_data": 0}
    assert_clean_log(server)


@pytest.fixture
def nul_receiver(threaded: Callable[[Receiver], Receiver]) -> Receiver:
    """A fulfilment receiver whose 2xx result holds `\\u0000` in a value and a key."""
    body = b'{"x": "a\\u0000b", "k\\u0000": 1}'
    return threaded(Receiver(answer=replying(200, body, {"content-type": "application/json"})))


@pytest.mark.postgres
def test_a_receivers_nul_is_stored_clean_on_postgres(
    serve: type[Server], database_url: str, nul_receiver: Receiver
) -> None:
    """Point 6: a receiver's 2xx result with `\\u0000` (stored as jsonb) left the order
    processing; it ships, with U+FFFD in place of the NUL."""
    server = serve(
        "--database-url", database_url, "--shipper", nul_receiver.url,
        "--shipper-secret", SECRET, "--auto-process",
    )  # fmt: skip
    [order_id] = submit(server, 1)
    with server.client() as client:
        eventually_sync(
            lambda: client.get(f"/orders/status/{order_id}").json()["status"] == "shipped",
            timeout_s=20,
        )
        order = client.get(f"/orders/{order_id}").json()
        assert order["shipment"] == {"x": "a\ufffdb", "k\ufffd": 1}
        assert json.dumps(order).count("\\u0000") == 0
    assert_clean_log(server)
