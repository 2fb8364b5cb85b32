"""`orderflow serve --shipper http://…` against a real local receiver (it verifies every
signature with standardwebhooks' own verifier) that answers a third of the calls 503: every
order ends shipped with the receiver's result, reached the receiver at least once, and is
recorded shipped exactly once."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest

from tests.conftest import eventually_sync
from tests.e2e.conftest import Server, submit
from tests.webhooks.receiver import SECRET, Received, Receiver, Reply, ThreadedReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def flaky_receiver() -> Iterator[Receiver]:
    calls = itertools.count()

    async def answer(received: Received) -> Reply:
        if next(calls) % 3 == 2:
            return 503, {}, b"busy, try again"
        attempt = received.headers["orderflow-attempt"]
        result = {"tracking": "T-" + received.webhook_id, "attempt": attempt}
        return 200, {"content-type": "application/json"}, json.dumps(result).encode()

    threaded = ThreadedReceiver(Receiver(answer=answer))
    try:
        yield threaded.start()
    finally:
        threaded.close()


def test_a_thousand_orders_ship_through_a_receiver_that_fails_a_third_of_the_calls(
    serve: type[Server], flaky_receiver: Receiver
) -> None:
    server = serve(
        "--shipper", flaky_receiver.url, "--shipper-secret", SECRET,
        "--max-attempts", "20", "--retry-backoff", "0.01", "--auto-process",
    )  # fmt: skip
    ids = submit(server, 1000)
    with server.client() as client:

        def all_shipped() -> bool:
            stats = client.get("/orders/stats").json()
            assert stats["by_status"]["failed"] == 0, stats
            return bool(stats["by_status"]["shipped"] == len(ids))

        eventually_sync(all_shipped, timeout_s=60)
        orders = [client.get(f"/orders/{order_id}").json() for order_id in ids]
    assert not flaky_receiver.failures, flaky_receiver.failures[:3]
    retried = 0
    for order in orders:
        attempts = sorted(
            int(r.headers["orderflow-attempt"])
            for r in flaky_receiver.received
            if r.webhook_id == order["id"]
        )
        assert attempts == list(range(1, len(attempts) + 1))  # same webhook-id on every attempt
        retried += len(attempts) > 1
        assert flaky_receiver.acked[order["id"]] == 1
        assert order["shipment"] == {"tracking": "T-" + order["id"], "attempt": str(attempts[-1])}
        assert [h["status"] for h in order["history"]].count("shipped") == 1
    assert retried >= 300  # a third of the calls failed, so about a third of the orders retried
    assert len(flaky_receiver.received) >= len(ids) + retried
