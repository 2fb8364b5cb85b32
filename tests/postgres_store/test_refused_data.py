"""A value PostgreSQL refuses (a NUL in text, `\\u0000` in jsonb) is a data error, never an
outage: StoreRefusedData at once, counted as such, no outage said; and the outcome writer
writes the rest of a batch and the refused outcome without its data, so no order is stuck."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

from orderflow.domain import Event, OrderFilter, OrderStatus, Outcome
from orderflow.errors import StoreRefusedData, StoreUnavailable
from orderflow.metrics import METRICS
from orderflow.outcomes import OutcomeWriter
from orderflow.store.postgres import PostgresOrderStore
from tests.conftest import ManualClock
from tests.postgres_store.conftest import LATER, add_orders, add_ready

pytestmark = pytest.mark.postgres


def errors() -> dict[str, int]:
    return dict(METRICS.store_errors)


def delta(before: dict[str, int]) -> dict[str, int]:
    return {kind: n - before.get(kind, 0) for kind, n in errors().items() if n != before.get(kind)}


async def test_a_value_the_database_refuses_is_a_data_error_not_an_outage(
    store: PostgresOrderStore,
) -> None:
    """A NUL in a reason was StoreUnavailable ("the database refused:
    CharacterNotInRepertoireError"): a 503 with Retry-After, a store error counted as
    unavailable, and waited out forever by the outcome writer. It is StoreRefusedData now:
    not an outage (no outage said), counted as refused_data, nothing changed."""
    [order_id] = await add_orders(store, 1)
    before = errors()
    with pytest.raises(StoreRefusedData, match="refused a value") as refused:
        await store.transition(order_id, Event.CANCEL, LATER, "a\x00b")
    assert not isinstance(refused.value, StoreUnavailable)
    where = OrderFilter(reason_contains="\x00")
    with pytest.raises(StoreRefusedData):
        await store.transition_matching(
            Event.CANCEL, OrderStatus.PENDING, where, LATER, "r", limit=10
        )
    assert delta(before) == {"refused_data": 2}
    assert store.outage.since is None
    assert (await store.get_order(order_id)).status is OrderStatus.PENDING


def let_through(store: PostgresOrderStore, unclean: dict[str, dict[str, Any]]) -> None:
    """Make `store.write_outcomes` set `unclean[order_id]`'s fields, past its own cleaning, on
    the first outcome of that order it writes: the bug of a value let through, as it reaches
    the database."""
    write = store.write_outcomes

    async def unchecked(owner: str, outcomes: list[Outcome]) -> list[bool]:
        for outcome in outcomes:
            for name, value in unclean.pop(outcome.order_id, {}).items():
                msgspec.structs.force_setattr(outcome, name, value)
        return await write(owner, outcomes)

    store.write_outcomes = unchecked  # type: ignore[method-assign]


async def test_the_writer_never_waits_out_a_refused_outcome_and_writes_the_rest_of_its_batch(
    store: PostgresOrderStore, caplog: pytest.LogCaptureFixture
) -> None:
    """One outcome the database refuses failed the whole batch it was written in (up to 500
    orders), or was retried forever as an outage. Now the others are written alone and the
    refused one is written without its reason and result, the bug logged with its traceback:
    every order moves on."""
    ids = await add_ready(store, 3)
    holdings = {h.order.id: h.token for h in await store.acquire("w", 3, lease_s=60)}
    let_through(store, {ids[1]: {"reason": "a\x00b"}, ids[2]: {"shipment": {"x": "\x00"}}})
    writer = OutcomeWriter(store, "w", ManualClock(LATER), holdings, lambda: False)
    writer.start()
    with caplog.at_level(logging.ERROR, logger="orderflow.outcomes"):
        writer.submit(ids[0], Event.SHIP, None, {"tracking": "t-0"})
        writer.submit(ids[1], Event.FAIL, "ok")
        writer.submit(ids[2], Event.SHIP)
        async with asyncio.timeout(10):
            await writer.close()
    shipped, failed, bare = [await store.get_order(i) for i in ids]
    assert [shipped.status, failed.status, bare.status] == [
        OrderStatus.SHIPPED,
        OrderStatus.FAILED,
        OrderStatus.SHIPPED,
    ]
    assert shipped.shipment == {"tracking": "t-0"}
    assert failed.history[-1].reason is not None
    assert "refused" in failed.history[-1].reason
    assert bare.shipment is None
    refused = [r for r in caplog.records if r.name == "orderflow.outcomes"]
    assert len(refused) == 2
    assert all(r.exc_info is not None and r.exc_info[0] is StoreRefusedData for r in refused)
    assert store.outage.since is None
    assert holdings == {}


async def test_a_refused_outcome_with_nothing_to_leave_out_fails_at_once(
    store: PostgresOrderStore,
) -> None:
    """An outcome refused with neither reason nor result is a bug the writer cannot work
    around: it says so at once (StoreRefusedData), never waits."""
    [order_id] = await add_ready(store, 1)
    [held] = await store.acquire("w", 1, lease_s=60)
    let_through(store, {order_id: {"order_id": "order_\x00"}})
    writer = OutcomeWriter(store, "w", ManualClock(LATER), {order_id: held.token}, lambda: False)
    async with asyncio.timeout(10):
        with pytest.raises(StoreRefusedData):
            await writer.write(order_id, Event.SHIP)
