"""The Deliverer against a real local receiver: signatures, the body, order, retries on a short
schedule, Retry-After, 410, redirects, timeouts, giving up, unordered delivery, replay, the
deliveries log, concurrency and stopping."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from orderflow.domain import EventType
from orderflow.errors import Gone
from orderflow.runtime import Runtime
from orderflow.store.memory import InMemoryOrderStore
from orderflow.webhooks.model import Claim, DeliveryOutcome, Subscription
from orderflow.webhooks.store import InMemoryWebhookStore
from tests.backends import another_handle, open_store, webhook_store
from tests.conftest import RuntimeFactory, eventually, make_order, settled
from tests.helpers import FAST, submit_many
from tests.receivers import SECRET, Received, Receiver, Reply, order_json
from tests.unit.conftest import Deliver


async def the_subscription(runtime: Runtime) -> Subscription:
    [subscription] = await runtime.webhooks.subscriptions()
    return subscription


async def last_seq(runtime: Runtime) -> int:
    return await runtime.store.last_event_seq()


async def all_acked(runtime: Runtime, receiver: Receiver) -> list[int]:
    """Wait until no order is processing and the receiver acknowledged every event of the log;
    the seqs in the order it acknowledged them."""
    await settled(runtime.store)  # type: ignore[arg-type]
    last = await last_seq(runtime)

    def done() -> bool:
        return len(receiver.acked) >= last

    async def recorded() -> bool:  # the receiver answers before the deliverer settles
        subscriptions = await runtime.webhooks.subscriptions()
        return all(s.cursor == last and s.retry_at is None for s in subscriptions)

    await eventually(done, timeout_s=15)
    await eventually(recorded)
    return receiver.seqs_acked()


# -- what is sent ---------------------------------------------------------------------------------


async def test_every_delivery_verifies_with_standardwebhooks_and_carries_the_order(
    deliver: Deliver, receiver: Receiver
) -> None:
    runtime = await deliver()
    [order_id] = await submit_many(runtime.service, 1)
    assert await all_acked(runtime, receiver) == [1]
    pending = await runtime.service.get_order(order_id)
    assert receiver.received[0].body["data"] == order_json(pending)  # the order as it is now
    await runtime.service.trigger_processing()
    acked = await all_acked(runtime, receiver)
    assert acked == [1, 2, 3]  # submitted, processing, shipped
    assert [r.body["type"] for r in receiver.received] == [
        "order.submitted",
        "order.processing",
        "order.shipped",
    ]
    events = await runtime.store.read_events(0, 10)
    order = await runtime.service.get_order(order_id)
    for received, event in zip(receiver.received, events, strict=True):
        assert received.webhook_id == f"evt_{event.seq}"
        assert set(received.body) == {"type", "timestamp", "data"}
        assert datetime.fromisoformat(received.body["timestamp"]) == event.at
        assert received.body["data"]["id"] == order_id
        sent_at = int(received.headers["webhook-timestamp"])
        assert abs(sent_at - datetime.now(UTC).timestamp()) < 60
        assert received.headers["webhook-signature"].startswith("v1,")
        assert received.headers["content-type"] == "application/json"
        assert received.headers["orderflow-attempt"] == "1"
    assert receiver.received[-1].body["data"] == order_json(order)  # shipped, with its history
    assert not receiver.failures  # each one verified (the receiver checks with the secret)


async def test_a_deleted_order_is_sent_as_its_id(deliver: Deliver, receiver: Receiver) -> None:
    runtime = await deliver()
    [order_id] = await submit_many(runtime.service, 1)
    await runtime.service.delete_order(order_id)
    await all_acked(runtime, receiver)
    assert [r.body["type"] for r in receiver.received] == ["order.submitted", "order.deleted"]
    assert receiver.received[1].body["data"] == {"id": order_id}


async def test_events_arrive_in_seq_order_each_acknowledged_once(
    deliver: Deliver, receiver: Receiver
) -> None:
    runtime = await deliver()
    await submit_many(runtime.service, 40)
    await runtime.service.trigger_processing()
    acked = await all_acked(runtime, receiver)
    last = await last_seq(runtime)
    assert acked == list(range(1, last + 1))
    assert set(receiver.arrived.values()) == {1}
    assert (await the_subscription(runtime)).cursor == last


async def test_unwanted_types_are_skipped_and_the_cursor_moves_past_them(
    deliver: Deliver, receiver: Receiver
) -> None:
    runtime = await deliver(webhook=None, webhook_secret=None)
    subscription = await runtime.webhooks.subscribe(
        receiver.url, [EventType.SHIPPED], SECRET, ordered=True
    )
    await submit_many(runtime.service, 3)
    await runtime.service.trigger_processing()
    last = 9

    async def caught_up() -> bool:
        return (await runtime.webhooks.get(subscription.id)).cursor == last

    await eventually(caught_up)
    assert [r.body["type"] for r in receiver.received] == ["order.shipped"] * 3
    assert receiver.seqs_acked() == [7, 8, 9]


# -- failures and retries ---------------------------------------------------------------------


async def test_a_receiver_down_for_a_while_gets_every_event_in_order_none_twice(
    deliver: Deliver, receiver: Receiver
) -> None:
    down_until = time.monotonic() + 0.8

    async def down_then_up(received: Received) -> Reply:
        return (503, {}) if received.at < down_until else (200, {})

    receiver.answer = down_then_up
    runtime = await deliver(webhook_retry_schedule="0.05,0.1,0.2,0.4,0.8,1.6")
    await submit_many(runtime.service, 10)
    await runtime.service.trigger_processing()
    acked = await all_acked(runtime, receiver)
    last = await last_seq(runtime)
    assert acked == list(range(1, last + 1))
    assert set(receiver.acked.values()) == {1}  # none twice per webhook-id
    assert receiver.arrived["evt_1"] > 1  # it was tried while the receiver was down
    first_ok = next(r.at for r in receiver.received if r.at >= down_until)
    assert all(r.at >= first_ok for r in receiver.received if r.webhook_id != "evt_1")
    log = await runtime.webhooks.deliveries((await the_subscription(runtime)).id)
    retried = [d for d in log if d.seq == 1]
    assert [d.attempt for d in reversed(retried)] == list(range(1, len(retried) + 1))
    assert retried[0].outcome is DeliveryOutcome.DELIVERED
    assert {d.outcome for d in retried[1:]} == {DeliveryOutcome.RETRYING}
    assert {(d.status_code, d.error) for d in retried[1:]} == {(503, "HTTP 503")}


async def test_retry_after_is_honoured(deliver: Deliver, receiver: Receiver) -> None:
    async def busy_once(received: Received) -> Reply:
        if receiver.arrived[received.webhook_id] == 1:
            return 503, {"Retry-After": "1"}
        return 200, {}

    receiver.answer = busy_once
    runtime = await deliver()
    await submit_many(runtime.service, 1)
    await all_acked(runtime, receiver)
    first, second = receiver.received[:2]
    assert second.webhook_id == first.webhook_id == "evt_1"
    assert second.at - first.at >= 0.95  # not the schedule's 50 ms


async def test_410_disables_the_subscription_and_replay_enables_it_again(
    deliver: Deliver, receiver: Receiver
) -> None:
    gone = True

    async def answer(received: Received) -> Reply:
        return (410, {}) if gone else (200, {})

    receiver.answer = answer
    runtime = await deliver()
    await submit_many(runtime.service, 2)

    async def disabled() -> Subscription | None:
        subscription = await the_subscription(runtime)
        return subscription if subscription.disabled_at is not None else None

    subscription = await eventually(disabled)
    assert subscription.disabled_reason == "the receiver answered 410 Gone"
    assert subscription.cursor == 0  # the event it refused is the next after a replay
    await submit_many(runtime.service, 1)
    await asyncio.sleep(0.3)
    assert [r.webhook_id for r in receiver.received] == ["evt_1"]  # nothing more sent
    [record] = await runtime.webhooks.deliveries(subscription.id)
    assert (record.status_code, record.outcome) == (410, DeliveryOutcome.DISABLED)

    gone = False
    replayed = await runtime.webhooks.replay(subscription.id, None)
    assert replayed.disabled_at is None
    assert await all_acked(runtime, receiver) == [1, 2, 3]


async def test_a_redirect_is_not_followed(deliver: Deliver, receiver: Receiver) -> None:
    async def moved_once(received: Received) -> Reply:
        if received.path == "/hook" and receiver.arrived["evt_1"] == 1:
            return 307, {"Location": receiver.url_for("/elsewhere")}
        return 200, {}

    receiver.answer = moved_once
    runtime = await deliver()
    await submit_many(runtime.service, 1)
    await all_acked(runtime, receiver)
    assert {r.path for r in receiver.received} == {"/hook"}
    log = await runtime.webhooks.deliveries((await the_subscription(runtime)).id)
    assert (log[-1].status_code, log[-1].error, log[-1].outcome) == (
        307,
        "HTTP 307: redirects are not followed",
        DeliveryOutcome.RETRYING,
    )
    assert log[0].outcome is DeliveryOutcome.DELIVERED


async def test_a_timeout_and_a_refused_connection_are_retried(
    deliver: Deliver, receiver: Receiver
) -> None:
    async def slow_once(received: Received) -> Reply:
        if receiver.arrived[received.webhook_id] == 1:
            await asyncio.sleep(1.0)
        return 200, {}

    receiver.answer = slow_once
    runtime = await deliver(webhook_timeout=0.3)
    await submit_many(runtime.service, 1)
    await all_acked(runtime, receiver)
    log = await runtime.webhooks.deliveries((await the_subscription(runtime)).id)
    assert (log[-1].status_code, log[-1].error) == (None, "timeout after 0.3s")
    assert 250 <= log[-1].latency_ms < 1000

    closed = Receiver()  # a port nobody listens on: started and closed again
    await closed.start()
    await closed.close()
    subscription = await runtime.webhooks.subscribe(closed.url, secret=SECRET)
    await submit_many(runtime.service, 1)

    async def refused() -> bool:
        log = await runtime.webhooks.deliveries(subscription.id)
        return bool(log) and log[-1].error == f"connection refused by 127.0.0.1:{closed.port}"

    await eventually(refused)


async def test_a_spent_schedule_gives_the_event_up_and_goes_on(
    deliver: Deliver, receiver: Receiver
) -> None:
    async def refuse_the_second(received: Received) -> Reply:
        return (500, {}) if received.webhook_id == "evt_2" else (200, {})

    receiver.answer = refuse_the_second
    runtime = await deliver(webhook_retry_schedule="0.01,0.01")
    await submit_many(runtime.service, 3)
    last = await last_seq(runtime)

    async def caught_up() -> bool:
        return (await the_subscription(runtime)).cursor == last

    await eventually(caught_up)
    assert receiver.seqs_acked() == [1, 3]
    assert receiver.arrived["evt_2"] == 3  # the first attempt and two retries
    log = await runtime.webhooks.deliveries((await the_subscription(runtime)).id)
    given_up = [d for d in log if d.seq == 2]
    assert [d.outcome for d in given_up] == [
        DeliveryOutcome.GIVEN_UP,
        DeliveryOutcome.RETRYING,
        DeliveryOutcome.RETRYING,
    ]


async def test_an_unordered_subscription_goes_past_a_failing_event(
    deliver: Deliver, receiver: Receiver
) -> None:
    async def second_fails_twice(received: Received) -> Reply:
        if received.webhook_id == "evt_2" and receiver.arrived["evt_2"] <= 2:
            return 503, {}
        return 200, {}

    receiver.answer = second_fails_twice
    runtime = await deliver(webhook=None, webhook_secret=None)
    subscription = await runtime.webhooks.subscribe(receiver.url, secret=SECRET, ordered=False)
    await submit_many(runtime.service, 4)
    await all_acked(runtime, receiver)
    acked = receiver.seqs_acked()
    assert sorted(acked) == [1, 2, 3, 4]
    assert acked.index(2) > acked.index(3)  # later events went past the failing one
    assert set(receiver.acked.values()) == {1}
    assert (await runtime.webhooks.get(subscription.id)).retry_at is None


async def test_the_ordered_default_holds_later_events_back_behind_a_failing_one(
    deliver: Deliver, receiver: Receiver
) -> None:
    async def second_fails_twice(received: Received) -> Reply:
        if received.webhook_id == "evt_2" and receiver.arrived["evt_2"] <= 2:
            return 503, {}
        return 200, {}

    receiver.answer = second_fails_twice
    runtime = await deliver()
    await submit_many(runtime.service, 4)
    assert await all_acked(runtime, receiver) == [1, 2, 3, 4]
    assert [r.webhook_id for r in receiver.received] == [
        "evt_1", "evt_2", "evt_2", "evt_2", "evt_3", "evt_4",
    ]  # fmt: skip


# -- replay, the log, concurrency, stopping ------------------------------------------------------


async def test_replay_sends_again_from_a_point_with_the_same_webhook_ids(
    deliver: Deliver, receiver: Receiver
) -> None:
    runtime = await deliver()
    await submit_many(runtime.service, 5)
    assert await all_acked(runtime, receiver) == [1, 2, 3, 4, 5]
    subscription = await the_subscription(runtime)
    replayed = await runtime.webhooks.replay(subscription.id, 2)
    assert replayed.cursor == 2

    async def again() -> bool:
        return len(receiver.acked_in_order) == 8

    await eventually(again)
    assert receiver.seqs_acked() == [1, 2, 3, 4, 5, 3, 4, 5]
    beyond = await runtime.webhooks.replay(subscription.id, 10**9)
    assert beyond.cursor == 5  # past the newest event: from the newest on


async def test_replay_from_before_what_the_log_keeps_is_gone(
    deliver: Deliver, receiver: Receiver
) -> None:
    runtime = await deliver(store=InMemoryOrderStore(event_retention=3))
    await submit_many(runtime.service, 6)

    async def caught_up() -> Subscription | None:
        subscription = await the_subscription(runtime)
        return subscription if subscription.cursor == 6 else None

    subscription = await eventually(caught_up)
    with pytest.raises(Gone):
        await runtime.webhooks.replay(subscription.id, 1)


async def test_a_subscription_behind_the_pruned_log_skips_to_what_is_kept(
    deliver: Deliver, receiver: Receiver
) -> None:
    down = True

    async def answer(received: Received) -> Reply:
        return (503, {}) if down else (200, {})

    receiver.answer = answer
    runtime = await deliver(
        store=InMemoryOrderStore(event_retention=3), webhook_retry_schedule="0.05,0.05,60"
    )
    await submit_many(runtime.service, 1)
    await eventually(lambda: receiver.arrived["evt_1"] == 3)  # now waiting a minute
    await submit_many(runtime.service, 5)  # evt_1 to evt_3 are pruned (3 kept: 4, 5, 6)
    down = False
    subscription = await the_subscription(runtime)
    await runtime.webhooks.replay(subscription.id, None)  # no waiting for the minute
    await eventually(lambda: receiver.seqs_acked() == [4, 5, 6])
    log = await runtime.webhooks.deliveries(subscription.id)
    pruned = next(d for d in log if d.outcome is DeliveryOutcome.PRUNED)
    assert pruned.error == "events 1 to 3 were pruned before they were delivered"


async def test_the_deliveries_log_says_what_each_attempt_became(
    deliver: Deliver, receiver: Receiver
) -> None:
    async def fail_once(received: Received) -> Reply:
        if receiver.arrived[received.webhook_id] == 1:
            return 502, {}
        return 200, {}

    receiver.answer = fail_once
    runtime = await deliver()
    await submit_many(runtime.service, 1)
    await all_acked(runtime, receiver)
    delivered, failed = await runtime.webhooks.deliveries((await the_subscription(runtime)).id)
    assert (failed.seq, failed.webhook_id, failed.attempt, failed.status_code) == (
        1, "evt_1", 1, 502,
    )  # fmt: skip
    assert (failed.error, failed.outcome) == ("HTTP 502", DeliveryOutcome.RETRYING)
    assert (delivered.attempt, delivered.status_code, delivered.error) == (2, 200, None)
    assert delivered.outcome is DeliveryOutcome.DELIVERED
    assert delivered.latency_ms > 0
    assert delivered.at >= failed.at


async def test_subscriptions_are_delivered_to_concurrently(
    deliver: Deliver, receiver: Receiver
) -> None:
    async def slow(received: Received) -> Reply:
        await asyncio.sleep(0.3)
        return 200, {}

    receiver.answer = slow
    runtime = await deliver(webhook=None, webhook_secret=None)
    for n in range(8):
        await runtime.webhooks.subscribe(receiver.url_for(f"/hook/{n}"), secret=SECRET)
    began = time.monotonic()
    await submit_many(runtime.service, 1)
    await eventually(lambda: len(receiver.acked_in_order) == 8)
    assert time.monotonic() - began < 8 * 0.3 / 2  # not one after the other


async def test_a_stop_mid_delivery_releases_the_claim(deliver: Deliver, receiver: Receiver) -> None:
    release = asyncio.Event()

    async def held(received: Received) -> Reply:
        await release.wait()
        return 200, {}

    receiver.answer = held
    runtime = await deliver()
    await submit_many(runtime.service, 1)
    await receiver.arrival.wait()
    await runtime.deliverer.stop(grace_s=0)
    release.set()
    subscription = await the_subscription(runtime)
    claim = await runtime.webhook_store.claim("another", 1, 10)
    assert claim is not None
    assert claim.subscription.id == subscription.id
    assert claim.subscription.cursor == 0  # not delivered: the next holder sends it again


class AnswerHeldBack(InMemoryWebhookStore):
    """Takes a claim, then holds its answer back until `answer` is set (a database that
    committed the claim, its answer still on the way)."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = asyncio.Event()
        self.answer = asyncio.Event()

    async def claim(self, owner: str, head: int, lease_s: float) -> Claim | None:
        claim = await super().claim(owner, head, lease_s)
        if claim is not None and not self.answer.is_set():
            self.taken.set()
            await self.answer.wait()
        return claim


async def test_a_claim_answered_while_stopping_is_released_not_left_to_its_lease(
    deliver: Deliver,
) -> None:
    """Regression: a stop that cancelled a claim in flight lost its answer, so a claim the
    database had made stayed held by the stopped instance until its lease ran out (30 s by
    default): on PostgreSQL, the next instance delivered nothing meanwhile (a third of the
    runs of the restart test below)."""
    store = AnswerHeldBack()
    runtime = await deliver(webhook_store=store)
    await submit_many(runtime.service, 1)
    await store.taken.wait()
    stopping = asyncio.create_task(runtime.deliverer.stop(grace_s=0))
    await asyncio.sleep(0)  # the stop has cancelled the claim's caller
    store.answer.set()
    await stopping
    claim = await store.claim("another", 1, 10)
    assert claim is not None
    assert claim.subscription.cursor == 0


@pytest.mark.postgres
async def test_on_postgresql_delivery_state_survives_a_restart(
    start_runtime: RuntimeFactory, receiver: Receiver
) -> None:
    """Regression (of the test): both runtimes kept their subscriptions in memory, so the
    second made a new one whose cursor began at the head of the log; the event written while
    no instance ran was skipped whenever it was numbered before that (a third of the runs)."""
    flags = {**FAST, "webhook": receiver.url, "webhook_secret": SECRET}

    async def start() -> Runtime:
        store = await another_handle(orders)
        return await start_runtime(store=store, webhook_store=webhook_store(store), **flags)

    async with open_store("postgres") as orders:
        first = await start()
        await submit_many(first.service, 3)
        await eventually(lambda: receiver.seqs_acked() == [1, 2, 3])
        await first.stop()
        await orders.add(make_order())  # while no instance runs
        await orders.sequence_events()  # numbered before the next one starts, as it may be
        second = await start()
        await submit_many(second.service, 1)
        await eventually(lambda: receiver.seqs_acked() == [1, 2, 3, 4, 5])
        assert len(await second.webhooks.subscriptions()) == 1  # not a second one
        assert set(receiver.acked.values()) == {1}
        await second.stop()  # before its schema goes
