"""A subscription whose sending goes wrong, on each store: a host no resolver takes, an error
nobody foresaw, a name that turns into a loopback address after it was subscribed, a literal
forbidden address stored before the rules. Each is a failed attempt of that subscription,
recorded in its deliveries and retried on its schedule (then given up), never an error of the
deliverer's loop; other subscriptions are delivered meanwhile. Names resolve through `Names`:
nothing but loopback is ever dialled, and no DNS server is asked."""

from __future__ import annotations

import logging

import pytest

from orderflow.domain import Order
from orderflow.errors import StoreUnavailable
from orderflow.runtime import Runtime
from orderflow.store.memory import InMemoryOrderStore
from orderflow.webhooks.model import DeliveryOutcome, DeliveryRecord, Subscription, new_webhook_id
from tests.conftest import RuntimeFactory, eventually
from tests.helpers import FAST, submit_many
from tests.receivers import SECRET, Names, Receiver
from tests.unit.conftest import OnEachStore

LONG_LABEL = "a" * 64
SPENT = [
    DeliveryOutcome.RETRYING,
    DeliveryOutcome.RETRYING,
    DeliveryOutcome.RETRYING,
    DeliveryOutcome.GIVEN_UP,
]  # FAST: 3 waits


async def stored_as_before(runtime: Runtime, url: str) -> Subscription:
    """A subscription to `url` written straight to the store, as one made before the rules
    that would refuse it now (or one another version let through)."""
    head = await runtime.store.last_event_seq()
    subscription = Subscription(new_webhook_id(), url, (), SECRET, True, runtime.clock.now(), head)
    await runtime.webhook_store.add(subscription)
    runtime.deliverer.wake()
    return subscription


async def spent(runtime: Runtime, subscription: Subscription) -> list[DeliveryRecord]:
    """The attempts at event 1 once its schedule is spent, the first first."""

    async def given_up() -> list[DeliveryRecord] | None:
        log = await runtime.webhooks.deliveries(subscription.id)
        return log[::-1] if log and log[0].outcome is DeliveryOutcome.GIVEN_UP else None

    return await eventually(given_up)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_host_no_resolver_takes_is_a_failed_attempt_retried_then_given_up(
    on_each_store: OnEachStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """It jammed its subscription: every poll logged a 55-line UnicodeError traceback as an
    error of the deliverer's loop, the cursor never moved and nothing was recorded."""
    runtime = await on_each_store()
    broken = await stored_as_before(runtime, f"http://{LONG_LABEL}/hook")
    healthy = await runtime.webhooks.subscribe(receiver.url, secret=SECRET)
    await submit_many(runtime.service, 1)
    attempts = await spent(runtime, broken)
    assert [a.outcome for a in attempts] == SPENT
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    for attempt in attempts:
        assert attempt.status_code is None
        assert attempt.error is not None
        assert "is not a valid host name" in attempt.error
        assert "label too long" in attempt.error
        assert "\n" not in attempt.error
    assert (await runtime.webhooks.get(broken.id)).cursor == 1  # given up: moved on
    await eventually(lambda: receiver.seqs_acked() == [1])  # the other one was delivered
    assert (await runtime.webhooks.get(healthy.id)).cursor >= 0
    assert errors_logged(caplog) == []


async def test_an_unforeseen_error_in_sending_is_a_failed_attempt_logged_once(
    on_each_store: OnEachStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Any exception from sending escaped the round: the deliverer logged it with its traceback
    on every poll and neither recorded, retried nor gave up the event."""
    names = Names({"buggy.test": RuntimeError("a resolver bug\non two lines")})
    runtime = await on_each_store(webhook_resolver=names)
    buggy = await runtime.webhooks.subscribe("http://buggy.test/hook", secret=SECRET)
    await runtime.webhooks.subscribe(receiver.url, secret=SECRET)
    await submit_many(runtime.service, 1)
    attempts = await spent(runtime, buggy)
    assert [a.outcome for a in attempts] == SPENT
    assert {a.error for a in attempts} == {
        "sending failed: RuntimeError: a resolver bug on two lines"
    }
    await eventually(lambda: receiver.seqs_acked() == [1])
    [logged] = errors_logged(caplog)  # four failures, one traceback
    assert logged.exc_info is not None
    assert "unforeseen RuntimeError" in logged.getMessage()


async def test_a_name_that_turns_into_loopback_is_refused_at_each_connection(
    on_each_store: OnEachStore, receiver: Receiver
) -> None:
    """Only the subscription was checked: a name that resolved to a public address then was
    dialled at whatever it resolved to at sending time (DNS rebinding)."""
    names = Names({"rebind.test": ["93.184.216.34"]})
    runtime = await on_each_store(webhook_resolver=names, webhook_allow_private=False)
    url = f"http://rebind.test:{receiver.port}/hook"
    subscription = await runtime.webhooks.subscribe(url, secret=SECRET)  # public: accepted
    names.names["rebind.test"] = ["127.0.0.1"]  # nothing was sent before this
    await submit_many(runtime.service, 1)
    attempts = await spent(runtime, subscription)
    assert [a.outcome for a in attempts] == SPENT
    assert {a.error for a in attempts} == {
        "destination refused: rebind.test resolves to 127.0.0.1, a loopback address"
    }
    assert receiver.received == []


async def test_a_forbidden_literal_address_is_refused_when_dialled(
    on_each_store: OnEachStore, receiver: Receiver
) -> None:
    """A literal address was dialled without any check (aiohttp resolves no literal, so a
    check in the resolver alone would miss it)."""
    runtime = await on_each_store(webhook_allow_private=False)
    subscription = await stored_as_before(runtime, receiver.url)  # 127.0.0.1
    await submit_many(runtime.service, 1)
    attempts = await spent(runtime, subscription)
    assert [a.outcome for a in attempts] == SPENT
    assert {a.error for a in attempts} == {"destination refused: 127.0.0.1 is a loopback address"}
    assert receiver.received == []


async def test_the_deliveries_log_keeps_at_most_200_characters_of_an_answer(
    on_each_store: OnEachStore, receiver: Receiver
) -> None:
    async def long_error(_: object) -> tuple[int, dict[str, str], bytes]:
        return 500, {}, b"x" * 10_000

    receiver.answer = long_error  # type: ignore[assignment]
    runtime = await on_each_store()
    subscription = await runtime.webhooks.subscribe(receiver.url, secret=SECRET)
    await submit_many(runtime.service, 1)
    attempts = await spent(runtime, subscription)
    assert {a.error for a in attempts} == {"HTTP 500: " + "x" * 200 + "…"}
    assert {a.status_code for a in attempts} == {500}


class FlakyOrders(InMemoryOrderStore):
    """An order store whose reads of an order fail while `down` is set."""

    down = False

    async def find_order(self, order_id: str) -> Order | None:
        if self.down:
            raise StoreUnavailable("the order store is down (test)")
        return await super().find_order(order_id)


async def test_an_outage_of_the_order_store_is_no_failed_attempt(
    start_runtime: RuntimeFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading the order is the store's part, not the receiver's: while it fails, nothing is
    attempted or recorded, the loop notes the outage (the store itself says it at WARNING),
    and the event goes out as attempt 1 after."""
    caplog.set_level(logging.DEBUG, logger="orderflow.webhooks")
    orders = FlakyOrders()
    runtime = await start_runtime(store=orders, **FAST)
    subscription = await runtime.webhooks.subscribe(receiver.url, secret=SECRET)
    orders.down = True
    await submit_many(runtime.service, 1)
    await eventually(lambda: "delivering webhooks: the order store is down" in caplog.text)
    assert await runtime.webhooks.deliveries(subscription.id) == []
    orders.down = False
    await eventually(lambda: receiver.seqs_acked() == [1])
    [delivered] = await eventually(lambda: runtime.webhooks.deliveries(subscription.id))
    assert (delivered.attempt, delivered.outcome) == (1, DeliveryOutcome.DELIVERED)
    assert errors_logged(caplog) == []
