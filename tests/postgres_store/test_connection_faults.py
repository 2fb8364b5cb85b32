"""Connections that break around a statement, through a FaultProxy: a break after the answer
arrived changes nothing about it; a break during a change leaves its outcome unknown; a refused
connection means nothing ran. And what PostgreSQL cannot hold (a NUL) is never sent at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from orderflow.domain import Event, Hold, OrderStatus, Outcome
from orderflow.errors import OrderNotFound, OutcomeUnknown, StoreUnavailable
from orderflow.runtime import Runtime
from orderflow.server import build_app
from orderflow.settings import Settings
from orderflow.store.postgres import PostgresOrderStore
from tests.conftest import FakeShipper, eventually
from tests.faultproxy import FaultProxy
from tests.postgres_store.conftest import (
    LATER,
    T0,
    add_orders,
    add_ready,
    make_order,
    proxied_url,
)

pytestmark = pytest.mark.postgres

# A change made `through` the proxy, which returns how to check, `direct`ly, that it was made.
Check = Callable[[], Awaitable[None]]
Change = Callable[[PostgresOrderStore, PostgresOrderStore], Awaitable[Check]]


async def add(direct: PostgresOrderStore, through: PostgresOrderStore) -> Check:
    order = make_order(5)
    assert await through.add(order) is None

    async def made() -> None:
        found = await direct.get_order(order.id)
        assert found.status is OrderStatus.PENDING

    return made


async def acquire(direct: PostgresOrderStore, through: PostgresOrderStore) -> Check:
    [order_id] = await add_ready(direct, 1)
    [held] = await through.acquire("w", 5, lease_s=60)
    assert held.order.id == order_id

    async def made() -> None:  # held as acquire said: the holder can write under its token
        outcome = Outcome(order_id, held.token, Event.SHIP, LATER)
        [written] = await direct.write_outcomes("w", [outcome])
        assert written is True

    return made


async def cancel(direct: PostgresOrderStore, through: PostgresOrderStore) -> Check:
    [order_id] = await add_orders(direct, 1)
    cancelled = await through.transition(order_id, Event.CANCEL, LATER, "no longer wanted")
    assert cancelled.status is OrderStatus.CANCELLED

    async def made() -> None:
        assert (await direct.get_order(order_id)).status is OrderStatus.CANCELLED

    return made


async def claim(direct: PostgresOrderStore, through: PostgresOrderStore) -> Check:
    await add_orders(direct, 3)
    assert await through.claim_pending(T0, 10) == 3

    async def made() -> None:
        assert (await direct.count_by_status())[OrderStatus.PROCESSING] == 3

    return made


async def outcome(direct: PostgresOrderStore, through: PostgresOrderStore) -> Check:
    await add_ready(direct, 1)
    [held] = await direct.acquire("w", 1, lease_s=60)
    [written] = await through.write_outcomes(
        "w", [Outcome(held.order.id, held.token, Event.SHIP, LATER)]
    )
    assert written is True

    async def made() -> None:
        assert (await direct.get_order(held.order.id)).status is OrderStatus.SHIPPED

    return made


@pytest.mark.parametrize("change", [add, acquire, cancel, claim, outcome])
async def test_a_connection_that_breaks_on_its_way_back_to_the_pool_changes_no_answer(
    store: PostgresOrderStore,
    proxied_store: PostgresOrderStore,
    proxy: FaultProxy,
    change: Change,
) -> None:
    """Regression: the pool resets a connection as it takes it back (asyncpg ends with RESET
    ALL); a break there, after the statement committed and answered, was reported as the
    statement's failure: a 503 for an order that exists, orders held that nobody knew of."""
    cut = proxy.cut_after(b"RESET ALL")
    made = await change(store, proxied_store)  # answers as if nothing broke
    assert cut.is_set()
    await made()
    # And the pool goes on, with a new connection.
    assert await proxied_store.find_order("order_" + "0" * 30) is None


@pytest.mark.parametrize(
    ("change", "statement"),
    [
        (add, b"WITH k AS (INSERT INTO idempotency_keys"),
        (cancel, b"WITH old AS (SELECT id, owner, attempt, status"),
        (claim, b"WITH picked AS (SELECT id FROM orders WHERE status = 'pending'"),
    ],
    ids=["add", "cancel", "claim"],
)
async def test_a_connection_lost_during_a_change_leaves_its_outcome_unknown(
    store: PostgresOrderStore,
    proxied_store: PostgresOrderStore,
    proxy: FaultProxy,
    change: Change,
    statement: bytes,
) -> None:
    lost = proxy.cut_before(statement)
    with pytest.raises(OutcomeUnknown):
        await change(store, proxied_store)
    assert lost.is_set()


async def test_a_connection_lost_during_a_read_is_unavailable(
    store: PostgresOrderStore, proxied_store: PostgresOrderStore, proxy: FaultProxy
) -> None:
    [order_id] = await add_orders(store, 1)
    lost = proxy.cut_before(order_id.encode())
    with pytest.raises(StoreUnavailable) as caught:
        await proxied_store.find_order(order_id)
    assert not isinstance(caught.value, OutcomeUnknown)
    assert lost.is_set()


async def test_a_refused_connection_means_nothing_ran(
    store: PostgresOrderStore, proxied_store: PostgresOrderStore, proxy: FaultProxy
) -> None:
    proxy.refuse(True)
    proxy.cut_all()
    await eventually(lambda: proxied_store.database.pool.get_size() == 0)  # the pool saw them go
    order = make_order(9)
    with pytest.raises(StoreUnavailable) as caught:
        await proxied_store.add(order)
    assert not isinstance(caught.value, OutcomeUnknown)
    assert await store.find_order(order.id) is None
    proxy.refuse(False)
    assert await proxied_store.add(order) is None  # and once the database is back, it works


NUL_ID = "order_\x00nul-marker"


async def test_an_id_with_a_nul_is_never_sent_to_postgresql(
    proxied_store: PostgresOrderStore, proxy: FaultProxy
) -> None:
    """PostgreSQL cannot hold a NUL in text: sent, the id is refused with an error (a 503 for a
    simple lookup). It is no id at all, so every route answers 404 without asking."""
    sent = proxy.cut_before(b"\x00nul-marker")
    runtime = Runtime(Settings(shutdown_grace=0), store=proxied_store, shipper=FakeShipper())
    await runtime.start()
    app = build_app(runtime)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            quoted = NUL_ID.replace("\x00", "%00")
            answers = [
                await client.get(f"/orders/{quoted}"),
                await client.get(f"/orders/status/{quoted}"),
                await client.delete(f"/orders/{quoted}"),
                await client.post(f"/orders/{quoted}/cancel"),
                await client.post(f"/orders/{quoted}/retry"),
            ]
        with pytest.raises(OrderNotFound):
            await runtime.service.get_order(NUL_ID)
        assert [a.status_code for a in answers] == [404] * 5, [a.text for a in answers]
        assert not sent.is_set()
        # The detector works: the store, asked directly, does send such an id (and fails).
        with pytest.raises(StoreUnavailable):
            await proxied_store.find_order(NUL_ID)
        assert sent.is_set()
    finally:
        await runtime.stop()
        app.close()


async def test_a_hold_is_checked_through_the_proxy_too(
    store: PostgresOrderStore, proxied_store: PostgresOrderStore
) -> None:
    """The proxy changes nothing when no fault is armed (the other tests rely on it)."""
    [order_id] = await add_ready(store, 1)
    [held] = await proxied_store.acquire("w", 1, lease_s=60)
    shipped = await proxied_store.transition(
        order_id, Event.SHIP, LATER, hold=Hold("w", held.token)
    )
    assert shipped.status is OrderStatus.SHIPPED


async def test_a_connection_goes_back_to_the_pool_without_a_word_to_the_server(
    store: PostgresOrderStore, proxy: FaultProxy
) -> None:
    """Regression: the pool reset every connection on its release, a round trip of four
    statements ("... RESET ALL") after every statement of ours: a third of all the round trips
    of claim-and-ship. Nothing of ours lives in a session, so nothing is reset."""
    through = await PostgresOrderStore.connect(
        proxied_url(proxy), server_settings=store.server_settings, apply_migrations=False
    )
    try:
        reset = proxy.cut_before(b"RESET ALL")
        await add_orders(through, 3)
        assert await through.claim_pending(LATER, 10) == 3
        assert len(await through.acquire("w", 10, lease_s=60)) == 3
        assert not reset.is_set()
    finally:
        await through.close()
