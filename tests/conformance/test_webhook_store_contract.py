"""The WebhookStore contract (webhooks/store.py), once per backend: subscriptions, `ensure` by
URL, claims and their leases, settlements checked against the claim, retries (ordered and
not), disabling and replay, the deliveries log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from orderflow.domain import EventType
from orderflow.errors import WebhookNotFound
from orderflow.signing import new_secret
from orderflow.webhooks.model import (
    Claim,
    DeliveryOutcome,
    DeliveryRecord,
    Settlement,
    Subscription,
    message_id,
    new_webhook_id,
)
from orderflow.webhooks.store import WebhookStore
from tests.conftest import eventually

LEASE_S = 30.0
AT = datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC)


def subscription(
    url: str = "http://127.0.0.1:9/hook", *, cursor: int = 0, ordered: bool = True
) -> Subscription:
    return Subscription(
        new_webhook_id(), url, (EventType.SHIPPED,), new_secret(), ordered, AT, cursor
    )


def record(
    seq: int, outcome: DeliveryOutcome = DeliveryOutcome.DELIVERED, attempt: int = 1
) -> DeliveryRecord:
    status = 200 if outcome is DeliveryOutcome.DELIVERED else 503
    error = None if outcome is DeliveryOutcome.DELIVERED else "HTTP 503"
    return DeliveryRecord(seq, message_id(seq), attempt, status, 1.5, error, outcome, AT)


async def claimed(webhooks: WebhookStore, owner: str = "a", head: int = 10) -> Claim:
    claim = await webhooks.claim(owner, head, LEASE_S)
    assert claim is not None
    return claim


# -- subscriptions --------------------------------------------------------------------------------


async def test_a_subscription_is_kept_as_given_and_listed_oldest_first(
    webhooks: WebhookStore,
) -> None:
    first = subscription()
    second = msgspec.structs.replace(
        subscription("https://example.com/b?x=1", ordered=False), created_at=AT + timedelta(1)
    )
    await webhooks.add(second)
    await webhooks.add(first)
    assert await webhooks.get(first.id) == first
    assert await webhooks.find(second.id) == second
    assert await webhooks.list_subscriptions() == [first, second]
    assert await webhooks.find(new_webhook_id()) is None


async def test_delete_removes_it_and_unknown_ids_are_not_found(webhooks: WebhookStore) -> None:
    assert not await webhooks.any()
    kept = subscription()
    await webhooks.add(kept)
    assert await webhooks.any()
    await webhooks.delete(kept.id)
    assert await webhooks.list_subscriptions() == []
    assert not await webhooks.any()
    for call in (webhooks.get, webhooks.delete, webhooks.deliveries):
        with pytest.raises(WebhookNotFound):
            await call(kept.id)
    with pytest.raises(WebhookNotFound):
        await webhooks.replay(kept.id, 0)


async def test_ensure_stores_one_subscription_per_url_even_when_racing(
    webhooks: WebhookStore,
) -> None:
    url = "http://127.0.0.1:9/flag"
    results = await asyncio.gather(*(webhooks.ensure(subscription(url)) for _ in range(6)))
    assert sum(added for _, added in results) == 1
    [stored] = await webhooks.list_subscriptions()
    assert {found.id for found, _ in results} == {stored.id}
    again, added = await webhooks.ensure(subscription(url))
    assert (again, added) == (stored, False)


# -- claims ---------------------------------------------------------------------------------------


async def test_only_a_subscription_behind_the_head_is_due(webhooks: WebhookStore) -> None:
    await webhooks.add(subscription(cursor=5))
    assert await webhooks.claim("a", 5, LEASE_S) is None
    claim = await claimed(webhooks, head=6)
    assert (claim.owner, claim.subscription.cursor, claim.retries) == ("a", 5, ())


async def test_a_subscription_is_never_claimed_by_two_owners_at_once(
    webhooks: WebhookStore,
) -> None:
    for _ in range(3):
        await webhooks.add(subscription())
    claims = await asyncio.gather(*(webhooks.claim(f"o{n}", 10, LEASE_S) for n in range(12)))
    got = [c for c in claims if c is not None]
    assert len(got) == 3
    assert len({c.subscription.id for c in got}) == 3
    assert await webhooks.claim("late", 10, LEASE_S) is None


async def test_release_frees_it_and_the_least_recently_held_goes_first(
    webhooks: WebhookStore,
) -> None:
    first, second = subscription(), subscription()
    await webhooks.add(first)
    await webhooks.add(second)
    a = await claimed(webhooks, "a")
    b = await claimed(webhooks, "b")
    assert {a.subscription.id, b.subscription.id} == {first.id, second.id}
    await webhooks.release(a, 3)
    await webhooks.release(b, 4)
    again = await claimed(webhooks, "c")
    assert again.subscription.id == a.subscription.id  # released first, so held least recently
    assert again.subscription.cursor == 3
    assert again.token != a.token


async def test_a_lease_that_ran_out_lets_another_owner_take_it(webhooks: WebhookStore) -> None:
    await webhooks.add(subscription())
    stale = await webhooks.claim("a", 10, 0.05)
    assert stale is not None
    assert await webhooks.claim("b", 10, LEASE_S) is None
    taken = await eventually(lambda: webhooks.claim("b", 10, LEASE_S), timeout_s=5)
    assert not await webhooks.settle(stale, Settlement(cursor=9), LEASE_S)
    await webhooks.release(stale, 9)  # the old owner's release changes nothing
    assert await webhooks.settle(taken, Settlement(cursor=1), LEASE_S)
    assert await webhooks.claim("c", 10, LEASE_S) is None
    assert (await webhooks.get(taken.subscription.id)).cursor == 1


async def test_a_settlement_extends_the_lease(webhooks: WebhookStore) -> None:
    """To `lease_s` from the settlement on. A second subscription, claimed under the same short
    lease after the settlement, tells when the first lease would have run out: on the store's
    own clock, however slow the machine."""
    held = subscription()
    await webhooks.add(held)
    claim = await webhooks.claim("a", 10, 0.2)
    assert claim is not None
    assert await webhooks.settle(claim, Settlement(cursor=1), LEASE_S)
    witness = subscription()
    await webhooks.add(witness)
    short = await webhooks.claim("w", 10, 0.2)
    assert short is not None
    assert short.subscription.id == witness.id
    taken = await eventually(lambda: webhooks.claim("b", 10, LEASE_S), timeout_s=5)
    assert taken.subscription.id == witness.id  # its lease ran out, so the first one's would have
    assert await webhooks.claim("b", 10, LEASE_S) is None  # the first is still held
    assert await webhooks.settle(claim, Settlement(cursor=2), 0.05)  # still the holder's
    again = await eventually(lambda: webhooks.claim("c", 10, LEASE_S), timeout_s=5)
    assert again.subscription.id == held.id  # a short lease from a settlement runs out too


# -- settlements ----------------------------------------------------------------------------------


async def test_a_settlement_moves_the_cursor_and_logs_the_attempt(webhooks: WebhookStore) -> None:
    kept = subscription()
    await webhooks.add(kept)
    claim = await claimed(webhooks)
    assert await webhooks.settle(claim, Settlement(cursor=4, record=record(4)), LEASE_S)
    assert (await webhooks.get(kept.id)).cursor == 4
    assert await webhooks.deliveries(kept.id) == [record(4)]
    forged = Claim(claim.subscription, claim.owner, claim.token + 1)
    assert not await webhooks.settle(forged, Settlement(cursor=9, record=record(9)), LEASE_S)
    other_owner = Claim(claim.subscription, "b", claim.token)
    assert not await webhooks.settle(other_owner, Settlement(cursor=9), LEASE_S)
    assert (await webhooks.get(kept.id)).cursor == 4
    assert await webhooks.deliveries(kept.id) == [record(4)]


async def test_the_deliveries_log_keeps_the_newest_100_newest_first(
    webhooks: WebhookStore,
) -> None:
    kept = subscription()
    await webhooks.add(kept)
    claim = await claimed(webhooks, head=200)
    for seq in range(1, 106):
        assert await webhooks.settle(claim, Settlement(cursor=seq, record=record(seq)), LEASE_S)
    log = await webhooks.deliveries(kept.id)
    assert [d.seq for d in log] == list(range(105, 5, -1))
    assert log[0] == record(105)


async def test_an_ordered_subscription_waits_for_its_retry(webhooks: WebhookStore) -> None:
    kept = subscription(cursor=2)
    await webhooks.add(kept)
    claim = await claimed(webhooks)
    retry = Settlement(
        cursor=2, seq=3, retry_attempt=1, retry_in_s=0.3, record=record(3, DeliveryOutcome.RETRYING)
    )
    assert await webhooks.settle(claim, retry, LEASE_S)
    await webhooks.release(claim, 2)
    waiting = await webhooks.get(kept.id)
    assert waiting.retry_at is not None
    assert await webhooks.claim("b", 10, LEASE_S) is None  # behind the head, but waiting
    again = await eventually(lambda: webhooks.claim("b", 10, LEASE_S), timeout_s=5)
    assert [(r.seq, r.attempt) for r in again.retries] == [(3, 1)]
    assert await webhooks.settle(again, Settlement(cursor=3, seq=3, record=record(3)), LEASE_S)
    done = await webhooks.get(kept.id)
    assert (done.cursor, done.retry_at) == (3, None)


async def test_an_unordered_subscription_moves_on_and_gets_its_due_retries(
    webhooks: WebhookStore,
) -> None:
    kept = subscription(ordered=False)
    await webhooks.add(kept)
    claim = await claimed(webhooks)
    later = Settlement(cursor=1, seq=1, retry_attempt=2, retry_in_s=60)
    soon = Settlement(cursor=2, seq=2, retry_attempt=1, retry_in_s=0)
    assert await webhooks.settle(claim, later, LEASE_S)
    assert await webhooks.settle(claim, soon, LEASE_S)
    await webhooks.release(claim, 2)
    again = await claimed(webhooks, head=2)  # caught up, but a retry is due
    assert [(r.seq, r.attempt) for r in again.retries] == [(2, 1)]  # not the one due later
    assert await webhooks.settle(again, Settlement(cursor=2, seq=2), LEASE_S)
    await webhooks.release(again, 2)
    assert await webhooks.claim("c", 2, LEASE_S) is None
    assert (await webhooks.get(kept.id)).retry_at is not None  # the later one still waits


async def test_a_disabled_subscription_is_not_claimed(webhooks: WebhookStore) -> None:
    kept = subscription()
    await webhooks.add(kept)
    claim = await claimed(webhooks)
    gone = Settlement(cursor=0, disable="the receiver answered 410 Gone")
    assert await webhooks.settle(claim, gone, LEASE_S)
    await webhooks.release(claim, 0)
    disabled = await webhooks.get(kept.id)
    assert disabled.disabled_at is not None
    assert disabled.disabled_reason == "the receiver answered 410 Gone"
    assert await webhooks.claim("b", 10, LEASE_S) is None


async def test_replay_enables_resets_the_cursor_forgets_retries_and_spends_the_claim(
    webhooks: WebhookStore,
) -> None:
    kept = subscription(cursor=5)
    await webhooks.add(kept)
    claim = await claimed(webhooks)
    retry = Settlement(cursor=5, seq=6, retry_attempt=3, retry_in_s=60, disable="410")
    assert await webhooks.settle(claim, retry, LEASE_S)
    replayed = await webhooks.replay(kept.id, 1)
    assert (replayed.cursor, replayed.disabled_at, replayed.retry_at) == (1, None, None)
    assert not await webhooks.settle(claim, Settlement(cursor=9), LEASE_S)
    assert await webhooks.claim("b", 10, LEASE_S) is None  # the old lease still stands
    await webhooks.release(claim, 9)  # frees it, without writing its cursor over the replay's
    again = await claimed(webhooks, "b")
    assert (again.subscription.cursor, again.retries) == (1, ())
    resumed = await webhooks.replay(kept.id, None)
    assert resumed.cursor == 1


async def test_a_deleted_subscription_refuses_its_holder(webhooks: WebhookStore) -> None:
    kept = subscription()
    await webhooks.add(kept)
    claim = await claimed(webhooks)
    await webhooks.delete(kept.id)
    assert not await webhooks.settle(claim, Settlement(cursor=3, record=record(3)), LEASE_S)
    await webhooks.release(claim, 3)
    assert await webhooks.find(kept.id) is None
