"""The OrderStore contract (store/base.py), checked against every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from orderflow.domain import (
    Event,
    EventType,
    Hold,
    Item,
    Order,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    ReasonCount,
    new_order,
    new_order_id,
    search_key,
)
from orderflow.errors import (
    EventsPruned,
    Gone,
    IllegalTransition,
    NotHeld,
    OrderConflict,
    OrderNotFound,
)
from orderflow.store.base import IdempotencyRecord, OrderStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)
LEASE_S = 15.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def order_at(seconds: float, entropy: int = 0, customer: str = "Ada") -> Order:
    when = at(seconds)
    items = (Item("Widget", 2), Item("Gadget", 1))
    return new_order(new_order_id(when, entropy), customer, items, when)


async def add_many(store: OrderStore, count: int) -> list[Order]:
    orders = [order_at(n, entropy=n, customer=f"c{n}") for n in range(count)]
    for order in orders:
        assert await store.add(order) is None
    return orders


async def held_orders(store: OrderStore, count: int, owner: str = "a") -> dict[str, int]:
    """`count` orders claimed and acquired by `owner`: id → token."""
    await add_many(store, count)
    await store.claim_pending(at(100), count)
    return {held.order.id: held.token for held in await store.acquire(owner, count, LEASE_S)}


async def events_of(store: OrderStore) -> list[tuple[EventType, str, OrderStatus | None]]:
    await store.sequence_events()
    return [(e.type, e.order_id, e.status) for e in await store.read_events(0, 10_000)]


# -- orders ---------------------------------------------------------------------------------------


async def test_added_order_reads_back_equal(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    assert await store.get_order(order.id) == order
    assert await store.find_order(order.id) == order


async def test_unknown_id_is_not_found(store: OrderStore) -> None:
    assert await store.find_order("order_" + "0" * 30) is None
    with pytest.raises(OrderNotFound):
        await store.get_order("order_" + "1" * 30)


async def test_ids_are_never_reused(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    with pytest.raises(OrderConflict):
        await store.add(order_at(1))
    assert len((await store.list_orders(OrderQuery())).orders) == 1


async def test_list_is_sorted_and_bounded(store: OrderStore) -> None:
    orders = await add_many(store, 10)
    page = await store.list_orders(OrderQuery(start=at(2), end=at(7)))
    assert [o.id for o in page.orders] == [o.id for o in orders[2:7]]
    assert page.next_cursor is None
    everything = await store.list_orders(OrderQuery())
    assert [o.id for o in everything.orders] == [o.id for o in orders]


async def test_from_is_inclusive_and_to_exclusive_to_the_microsecond(store: OrderStore) -> None:
    order = order_at(5)
    await store.add(order)
    tick = timedelta(microseconds=1)
    for start, end, expected in [
        (at(5), at(5) + tick, [order.id]),
        (at(5) + tick, None, []),
        (None, at(5), []),
        (at(5), at(5), []),
    ]:
        page = await store.list_orders(OrderQuery(start=start, end=end))
        assert [o.id for o in page.orders] == expected


async def test_paging_with_the_cursor_visits_every_order_once(store: OrderStore) -> None:
    orders = await add_many(store, 23)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await store.list_orders(OrderQuery(limit=5, cursor=cursor, start=at(1)))
        seen += [o.id for o in page.orders]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [o.id for o in orders[1:]]


async def test_cursor_before_the_range_start_is_harmless(store: OrderStore) -> None:
    orders = await add_many(store, 5)
    page = await store.list_orders(OrderQuery(start=at(3), cursor=orders[0].id))
    assert [o.id for o in page.orders] == [o.id for o in orders[3:]]


async def test_status_filter(store: OrderStore) -> None:
    orders = await add_many(store, 6)
    await store.transition(orders[1].id, Event.CANCEL, at(100))
    await store.transition(orders[4].id, Event.CANCEL, at(100))
    await store.claim_pending(at(100), 1)  # orders[0] → processing
    for status, expected in [
        (OrderStatus.CANCELLED, [orders[1], orders[4]]),
        (OrderStatus.PROCESSING, [orders[0]]),
        (OrderStatus.PENDING, [orders[2], orders[3], orders[5]]),
        (OrderStatus.SHIPPED, []),
    ]:
        page = await store.list_orders(OrderQuery(status=status, limit=2))
        assert [o.id for o in page.orders] == [o.id for o in expected[:2]]
        assert (page.next_cursor is not None) == (len(expected) > 2)


async def test_orders_as_json_are_the_orders_encoded(store: OrderStore) -> None:
    """What the API sends (find_order_json, list_orders_json) is byte for byte what the orders
    encode to, in every state, with or without microseconds, whatever the names hold."""
    orders = [
        order_at(n + (0.000123 * n if n % 3 else 0), entropy=n, customer=f'c "{n}" \\ é 😀')
        for n in range(8)
    ]
    for order in orders:
        await store.add(order)
    await store.transition(orders[1].id, Event.CANCEL, at(20), "changed my mind")
    await store.claim_pending(at(30.5), 10, created_before=at(5))  # 0, 2, 3, 4
    held = {h.order.id: h.token for h in await store.acquire("a", 10, LEASE_S)}
    shipment = {"tracking": "1Z", "weight": 1.5, "legs": [{"by": "air"}, None]}
    outcomes = [
        Outcome(orders[0].id, held[orders[0].id], Event.SHIP, at(40.25), None, shipment),
        Outcome(orders[2].id, held[orders[2].id], Event.FAIL, at(41), "address refused"),
        Outcome(orders[3].id, held[orders[3].id], Event.REATTEMPT, at(42), "busy"),
    ]
    await store.write_outcomes("a", outcomes)
    await store.transition(orders[2].id, Event.RETRY, at(43.000001), "carrier is back")
    for order in orders:
        assert await store.find_order_json(order.id) == msgspec.json.encode(
            await store.get_order(order.id)
        )
    assert await store.find_order_json("order_" + "0" * 30) is None
    for query in [
        OrderQuery(),
        OrderQuery(limit=3, cursor=orders[1].id),
        OrderQuery(start=at(2), end=at(6)),
        *(OrderQuery(status=status) for status in OrderStatus),
    ]:
        page, json_page = await store.list_orders(query), await store.list_orders_json(query)
        assert msgspec.json.encode(json_page.orders) == msgspec.json.encode(page.orders)
        assert (json_page.count, json_page.next_cursor) == (len(page.orders), page.next_cursor)


async def test_delete_only_pending(store: OrderStore) -> None:
    pending, cancelled = order_at(1), order_at(2)
    await store.add(pending)
    await store.add(cancelled)
    await store.transition(cancelled.id, Event.CANCEL, at(3))
    await store.delete_pending(pending.id, at(4))
    assert await store.find_order(pending.id) is None
    with pytest.raises(IllegalTransition):
        await store.delete_pending(cancelled.id, at(5))
    with pytest.raises(OrderNotFound):
        await store.delete_pending(pending.id, at(5))
    assert (await store.list_orders(OrderQuery())).orders == [await store.get_order(cancelled.id)]


async def test_transition_appends_history(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    cancelled = await store.transition(order.id, Event.CANCEL, at(2), "changed my mind")
    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.updated_at == at(2)
    assert cancelled.history[-1].reason == "changed my mind"
    assert await store.get_order(order.id) == cancelled


async def test_illegal_transition_changes_nothing(store: OrderStore) -> None:
    order = order_at(1)
    await store.add(order)
    with pytest.raises(IllegalTransition):
        await store.transition(order.id, Event.SHIP, at(2))
    with pytest.raises(OrderNotFound):
        await store.transition("order_" + "1" * 30, Event.CANCEL, at(2))
    assert await store.get_order(order.id) == order


async def test_claim_moves_the_oldest_pending_first(store: OrderStore) -> None:
    orders = await add_many(store, 5)
    assert await store.claim_pending(at(50), 2) == 2
    assert await store.claim_pending(at(51), 10, created_before=at(4)) == 2
    statuses = [(await store.get_order(o.id)).status for o in orders]
    assert statuses == [OrderStatus.PROCESSING] * 4 + [OrderStatus.PENDING]
    assert (await store.get_order(orders[0].id)).history[-1].at == at(50)
    assert await store.claim_pending(at(52), 10, created_before=at(4)) == 0


# -- holds ----------------------------------------------------------------------------------------


async def test_acquire_hands_each_ready_order_to_one_owner_under_a_new_token(
    store: OrderStore,
) -> None:
    orders = await add_many(store, 4)
    await store.claim_pending(at(10), 10)
    first = await store.acquire("a", 3, LEASE_S)
    second = await store.acquire("b", 3, LEASE_S)
    assert [h.order.id for h in first] == [o.id for o in orders[:3]]
    assert [h.order.id for h in second] == [orders[3].id]
    assert await store.acquire("c", 3, LEASE_S) == []
    assert all(h.order.status is OrderStatus.PROCESSING for h in first + second)
    assert all(h.token > 0 for h in first + second)  # a token grows per order, per acquisition


async def test_outcomes_are_checked_against_owner_and_token(store: OrderStore) -> None:
    holds = await held_orders(store, 1)
    [(order_id, token)] = holds.items()
    with pytest.raises(NotHeld):
        await store.transition(order_id, Event.SHIP, at(3), hold=Hold("b", token))
    with pytest.raises(NotHeld):
        await store.transition(order_id, Event.SHIP, at(3), hold=Hold("a", token + 1))
    again = await store.transition(order_id, Event.REATTEMPT, at(3), "again", hold=Hold("a", token))
    assert again.status is OrderStatus.PROCESSING  # a reattempt keeps the hold
    shipped = await store.transition(order_id, Event.SHIP, at(4), hold=Hold("a", token))
    assert shipped.status is OrderStatus.SHIPPED
    with pytest.raises(IllegalTransition):
        await store.transition(order_id, Event.SHIP, at(5), hold=Hold("a", token))


async def test_a_stale_token_is_refused_even_for_the_same_owner(store: OrderStore) -> None:
    """A hold that was handed back and acquired again by the same owner has a new token: a
    worker still holding the old one cannot write the order's outcome."""
    holds = await held_orders(store, 1)
    [(order_id, old)] = holds.items()
    await store.transition(order_id, Event.HANDBACK, at(5), "let go", hold=Hold("a", old))
    [again] = await store.acquire("a", 1, LEASE_S)
    assert again.token > old
    [refused] = await store.write_outcomes("a", [Outcome(order_id, old, Event.SHIP, at(6))])
    assert refused is False
    [written] = await store.write_outcomes("a", [Outcome(order_id, again.token, Event.SHIP, at(6))])
    assert written is True
    assert (await store.get_order(order_id)).status is OrderStatus.SHIPPED


async def test_a_cancel_beats_a_late_finisher(store: OrderStore) -> None:
    holds = await held_orders(store, 1)
    [(order_id, token)] = holds.items()
    await store.transition(order_id, Event.CANCEL, at(3))
    with pytest.raises(IllegalTransition):
        await store.transition(order_id, Event.SHIP, at(4), hold=Hold("a", token))
    assert (await store.get_order(order_id)).status is OrderStatus.CANCELLED


async def test_released_order_can_be_claimed_and_acquired_again(store: OrderStore) -> None:
    holds = await held_orders(store, 1)
    [(order_id, token)] = holds.items()
    back = await store.transition(order_id, Event.RELEASE, at(3), "shutdown", hold=Hold("a", token))
    assert back.status is OrderStatus.PENDING
    assert await store.acquire("b", 1, LEASE_S) == []
    assert await store.claim_pending(at(4), 1) == 1
    [again] = await store.acquire("b", 1, LEASE_S)
    assert again.order.id == order_id
    assert await store.acquire("c", 1, LEASE_S) == []


async def test_write_outcomes_writes_what_the_owner_still_holds(store: OrderStore) -> None:
    orders = await add_many(store, 4)
    await store.claim_pending(at(10), 4)
    tokens = {h.order.id: h.token for h in await store.acquire("a", 3, LEASE_S)}
    await store.transition(orders[1].id, Event.CANCEL, at(11))
    results = await store.write_outcomes(
        "a",
        [
            Outcome(orders[0].id, tokens[orders[0].id], Event.SHIP, at(12), None, {"t": "X1"}),
            Outcome(orders[1].id, tokens[orders[1].id], Event.SHIP, at(12)),
            Outcome(orders[2].id, tokens[orders[2].id], Event.REATTEMPT, at(12), "again"),
            Outcome(orders[3].id, 999_999, Event.FAIL, at(12), "x"),  # ready: nobody's
        ],
    )
    assert results == [True, False, True, False]
    assert [(await store.get_order(o.id)).status for o in orders] == [
        OrderStatus.SHIPPED,
        OrderStatus.CANCELLED,
        OrderStatus.PROCESSING,
        OrderStatus.PROCESSING,
    ]
    shipped = await store.get_order(orders[0].id)
    assert shipped.shipment == {"t": "X1"}
    assert (await store.get_order(orders[1].id)).status is OrderStatus.CANCELLED
    hold = Hold("a", tokens[orders[2].id])
    final = await store.transition(orders[2].id, Event.SHIP, at(13), hold=hold)
    assert final.history[-2].reason == "again"
    assert await store.write_outcomes("a", []) == []


async def test_renew_reports_what_was_lost_and_hands_back_what_the_owner_forgot(
    store: OrderStore,
) -> None:
    holds = await held_orders(store, 3)
    kept, cancelled, forgotten = sorted(holds)
    await store.transition(cancelled, Event.CANCEL, at(200))
    known = {kept: holds[kept], cancelled: holds[cancelled]}
    lost = await store.renew("a", known, LEASE_S, at(201))
    assert lost == {cancelled}
    # The forgotten order (an acquire whose answer never arrived) is ready again, for anyone.
    [again] = await store.acquire("b", 5, LEASE_S)
    assert again.order.id == forgotten
    assert again.order.history[-1].reason is not None
    assert "handed back" in again.order.history[-1].reason
    # What is held under the token known is kept.
    done = await store.transition(kept, Event.SHIP, at(202), hold=Hold("a", holds[kept]))
    assert done.status is OrderStatus.SHIPPED
    assert await store.renew("a", {kept: holds[kept]}, LEASE_S, at(203)) == {kept}


async def test_retire_hands_back_everything_the_owner_holds(store: OrderStore) -> None:
    holds = await held_orders(store, 2)
    assert await store.retire("a", at(300)) == 2
    again = await store.acquire("b", 5, LEASE_S)
    assert sorted(h.order.id for h in again) == sorted(holds)
    assert await store.retire("a", at(301)) == 0


async def test_sharing_hooks_are_safe_to_call(store: OrderStore) -> None:
    await store.subscribe(lambda: None, lambda order_id: None)
    assert await store.renew("a", {}, LEASE_S, at(1)) == set()
    assert await store.rescue_expired(at(1)) == 0
    assert await store.retire("a", at(2)) == 0
    await store.ping()


# -- operators ------------------------------------------------------------------------------------


async def test_counts_and_failure_reasons_follow_every_move(store: OrderStore) -> None:
    orders = await add_many(store, 6)
    await store.transition(orders[0].id, Event.CANCEL, at(9))
    await store.delete_pending(orders[5].id, at(9))
    await store.claim_pending(at(9), 4)
    tokens = {h.order.id: h.token for h in await store.acquire("a", 4, LEASE_S)}
    outcomes = [
        Outcome(orders[1].id, tokens[orders[1].id], Event.FAIL, at(10), "timeout"),
        Outcome(orders[2].id, tokens[orders[2].id], Event.FAIL, at(10), "timeout"),
        Outcome(orders[3].id, tokens[orders[3].id], Event.FAIL, at(10), "HTTP 500"),
    ]
    await store.write_outcomes("a", outcomes)
    await store.transition(orders[2].id, Event.RETRY, at(11), "operator")
    stats = await store.stats()
    assert stats.by_status == {
        OrderStatus.PENDING: 1,
        OrderStatus.PROCESSING: 1,
        OrderStatus.SHIPPED: 0,
        OrderStatus.CANCELLED: 1,
        OrderStatus.FAILED: 2,
    }
    assert stats.failed_reasons == [ReasonCount("HTTP 500", 1), ReasonCount("timeout", 1)]
    assert await store.count_by_status() == stats.by_status


async def test_bulk_retry_takes_failed_orders_by_reason_and_time(store: OrderStore) -> None:
    orders = await add_many(store, 6)
    await store.claim_pending(at(20), 6)
    tokens = {h.order.id: h.token for h in await store.acquire("a", 6, LEASE_S)}
    reasons = ["timeout", "HTTP 503", "Timeout reached", "timeout", "refused", "timeout"]
    await store.write_outcomes(
        "a",
        [
            Outcome(o.id, tokens[o.id], Event.FAIL, at(21), reason)
            for o, reason in zip(orders, reasons, strict=True)
        ],
    )
    where = OrderFilter(start=at(1), end=at(5), reason_contains="TIMEOUT")
    moved, after = await store.transition_matching(
        Event.RETRY, OrderStatus.FAILED, where, at(22), "retry", limit=1
    )
    assert moved == [orders[2].id]
    assert after is not None
    rest, after = await store.transition_matching(
        Event.RETRY, OrderStatus.FAILED, where, at(22), "retry", limit=10, after=after
    )
    assert rest == [orders[3].id]
    assert after is None
    statuses = [(await store.get_order(o.id)).status for o in orders]
    assert (
        statuses == [OrderStatus.FAILED] * 2 + [OrderStatus.PENDING] * 2 + [OrderStatus.FAILED] * 2
    )
    assert (await store.get_order(orders[2].id)).history[-1].reason == "retry"


async def test_bulk_cancel_ends_holds(store: OrderStore) -> None:
    holds = await held_orders(store, 3)
    pending = order_at(50, entropy=99)
    await store.add(pending)
    everything = OrderFilter()
    moved, _ = await store.transition_matching(
        Event.CANCEL, OrderStatus.PROCESSING, everything, at(400), "bulk", limit=100
    )
    assert sorted(moved) == sorted(holds)
    moved, after = await store.transition_matching(
        Event.CANCEL, OrderStatus.PENDING, everything, at(400), "bulk", limit=100
    )
    assert moved == [pending.id]
    assert after is None
    for order_id, token in holds.items():
        with pytest.raises(IllegalTransition):
            await store.transition(order_id, Event.SHIP, at(401), hold=Hold("a", token))
    assert await store.renew("a", holds, LEASE_S, at(402)) == set(holds)


# -- search and sort ------------------------------------------------------------------------------

# Names beyond ASCII, and what a prefix of any case finds of them (by Unicode casefold).
NAMES = [
    "Straße Süd", "STRASSER", "strand", "Ærøskøbing Kro", "ærø", "Aeroflot",
    "Σωκράτης", "σίσυφος", "ΣΊΣΥΦΟΣ", "Юрий", "юлия", "İstanbul", "ǅemal", "ﬁne Foods",
]  # fmt: skip
SEARCHES = ["STRASSE", "stras", "ÆRØ", "aer", "σωκ", "ΣΊΣ", "юр", "Ю", "ǆ", "FI", "z", "ß"]


async def all_pages(store: OrderStore, query: OrderQuery) -> list[str]:
    """The ids of every page of `query`, following next_cursor (each page within the limit)."""
    seen: list[str] = []
    for _ in range(1000):
        page = await store.list_orders(query)
        assert len(page.orders) <= query.limit
        seen += [o.id for o in page.orders]
        if page.next_cursor is None:
            return seen
        query = msgspec.structs.replace(query, cursor=page.next_cursor)
    raise AssertionError("the pages never end")


async def names_at_equal_times(store: OrderStore) -> list[Order]:
    """NAMES, three orders a second: most share their timestamp with others."""
    orders = [order_at(n // 3, entropy=n, customer=name) for n, name in enumerate(NAMES)]
    for order in orders:
        await store.add(order)
    return sorted(orders, key=lambda o: o.id)


@pytest.mark.parametrize("newest", [False, True], ids=["oldest", "newest"])
async def test_a_customer_prefix_finds_by_casefold_on_every_page(
    store: OrderStore, newest: bool
) -> None:
    orders = await names_at_equal_times(store)
    for text in SEARCHES:
        key = search_key(text)
        expected = [o.id for o in orders if o.customer.casefold().startswith(text.casefold())]
        if newest:
            expected.reverse()
        for limit in (1, 2, 100):
            query = OrderQuery(customer=key, limit=limit, newest=newest)
            assert await all_pages(store, query) == expected, (text, limit)
    straße = [orders[0].id, orders[1].id]  # "Straße Süd", "STRASSER"
    assert await all_pages(store, OrderQuery(customer=search_key("STRASSE"))) == straße


async def test_a_customer_search_combines_with_time_and_status(store: OrderStore) -> None:
    orders = await names_at_equal_times(store)
    await store.transition(orders[1].id, Event.CANCEL, at(100))
    await store.transition(orders[2].id, Event.CANCEL, at(100))
    stras = search_key("stras")
    found = await all_pages(store, OrderQuery(customer=stras, status=OrderStatus.PENDING))
    assert found == [orders[0].id]
    found = await all_pages(store, OrderQuery(customer=stras, start=at(0), end=at(1), limit=1))
    assert found == [o.id for o in orders[:3] if o.customer.casefold().startswith("stras")]
    assert await all_pages(store, OrderQuery(customer=stras, start=at(1))) == []


async def test_an_order_is_found_by_its_id_or_its_tail(store: OrderStore) -> None:
    orders = await names_at_equal_times(store)
    target = orders[5]
    for text in (target.id, target.id[-9:], target.id[-20:], target.id[-33:]):
        for newest in (False, True):
            query = OrderQuery(id_tail=text, newest=newest, limit=1)
            assert await all_pages(store, query) == [target.id], text
    # A tail that ids share (an id ends with its entropy, 16 hex digits): each is found.
    twins = [order_at(9, entropy=(n << 32) + 5) for n in (1, 2)]
    for twin in twins:
        await store.add(twin)
    shared = sorted([target.id, *(t.id for t in twins)])
    assert await all_pages(store, OrderQuery(id_tail=target.id[-8:], limit=1)) == shared
    assert await all_pages(store, OrderQuery(id_tail=target.id[-9:])) == [target.id]
    assert await all_pages(store, OrderQuery(id_tail="f" * 8)) == []
    assert await all_pages(store, OrderQuery(id_tail=target.id, status=OrderStatus.SHIPPED)) == []
    assert await all_pages(store, OrderQuery(id_tail=target.id, end=at(0))) == []
    name = search_key(target.customer[:3])
    assert await all_pages(store, OrderQuery(id_tail=target.id[-8:], customer=name)) == [target.id]


@pytest.mark.parametrize("status", [None, OrderStatus.PENDING, OrderStatus.PROCESSING])
async def test_newest_first_pages_backwards_through_equal_timestamps(
    store: OrderStore, status: OrderStatus | None
) -> None:
    orders = [order_at(n // 4, entropy=n) for n in range(22)]  # four orders a second
    for order in orders:
        await store.add(order)
    if status is OrderStatus.PROCESSING:
        await store.claim_pending(at(100), 22)
    ids = sorted(o.id for o in orders)
    for limit in (1, 3, 4, 100):
        assert (
            await all_pages(store, OrderQuery(newest=True, limit=limit, status=status))
            == (ids[::-1])
        )
        assert await all_pages(store, OrderQuery(limit=limit, status=status)) == ids
        window = OrderQuery(newest=True, limit=limit, start=at(1), end=at(3), status=status)
        assert await all_pages(store, window) == ids[4:12][::-1]
    page = await store.list_orders(OrderQuery(newest=True, limit=5, status=status))
    assert [o.id for o in page.orders] == ids[:-6:-1]
    assert page.next_cursor == ids[-5]
    rest = await store.list_orders(
        OrderQuery(newest=True, limit=100, cursor=page.next_cursor, status=status)
    )
    assert [o.id for o in rest.orders] == ids[-6::-1]


async def test_bulk_filters_by_customer_and_a_dry_run_changes_nothing(store: OrderStore) -> None:
    orders = await names_at_equal_times(store)
    where = OrderFilter(customer=search_key("STRASSE"))
    before = await events_of(store)
    dry, after = await store.transition_matching(
        Event.CANCEL, OrderStatus.PENDING, where, at(100), "bulk", limit=100, dry_run=True
    )
    assert dry == [orders[0].id, orders[1].id]
    assert after is None
    assert await events_of(store) == before
    assert (await store.get_order(orders[0].id)).status is OrderStatus.PENDING
    moved, _ = await store.transition_matching(
        Event.CANCEL, OrderStatus.PENDING, where, at(100), "bulk", limit=100
    )
    assert moved == dry
    assert (await store.get_order(orders[0].id)).status is OrderStatus.CANCELLED
    wide = OrderFilter(customer=search_key("S"), start=at(1))
    dry, _ = await store.transition_matching(
        Event.CANCEL, OrderStatus.PENDING, wide, at(101), "bulk", limit=1, dry_run=True
    )
    assert dry == [o.id for o in orders[3:] if o.customer.casefold().startswith("s")][:1]


# -- idempotency keys -----------------------------------------------------------------------------


async def test_an_idempotency_key_is_kept_with_its_order_once(store: OrderStore) -> None:
    first, second = order_at(1), order_at(2)
    record = IdempotencyRecord("key-1", "fp", first.id, at(1))
    assert await store.add(first, record) is None
    existing = await store.add(second, IdempotencyRecord("key-1", "other", second.id, at(2)))
    assert existing == record
    assert await store.find_order(second.id) is None  # nothing stored for the second try
    assert await store.find_idempotency("key-1") == record
    assert await store.find_idempotency("key-2") is None
    assert await store.prune_idempotency(at(1)) == 0
    assert await store.prune_idempotency(at(2)) == 1
    assert await store.find_idempotency("key-1") is None
    assert await store.add(second, IdempotencyRecord("key-1", "other", second.id, at(2))) is None


# -- the event log --------------------------------------------------------------------------------


async def test_whatever_a_shipper_said_is_written_storable_with_its_event(
    store: OrderStore,
) -> None:
    """A shipper's failure with a NUL, a lone surrogate and a line break, and a result with
    `\u0000` in a value and a key: refused by PostgreSQL (and waited out as an outage), kept
    as they came in memory. An `Outcome` is storable whatever it is given: every store keeps
    the same clean text, in the order and in its event."""
    tokens = await held_orders(store, 3)
    failed, shipped, noted = sorted(tokens)
    results = await store.write_outcomes(
        "a",
        [
            Outcome(failed, tokens[failed], Event.FAIL, at(101), "a\x00b\ud800c\nd"),
            Outcome(shipped, tokens[shipped], Event.SHIP, at(101), None, {"x\x00": ["\x00"]}),
            Outcome(noted, tokens[noted], Event.REATTEMPT, at(101), "carrier said \x00"),
        ],
    )
    assert results == [True, True, True]
    assert [(await store.get_order(i)).status for i in (failed, shipped, noted)] == [
        OrderStatus.FAILED,
        OrderStatus.SHIPPED,
        OrderStatus.PROCESSING,
    ]
    assert (await store.get_order(failed)).history[-1].reason == "a\ufffdb\ufffdc d"
    assert (await store.get_order(shipped)).shipment == {"x\ufffd": ["\ufffd"]}
    assert (await store.get_order(noted)).history[-1].reason == "carrier said \ufffd"
    await store.sequence_events()
    events = {e.order_id: e for e in await store.read_events(0, 100) if e.at == at(101)}
    assert events[failed].reason == "a\ufffdb\ufffdc d"
    assert events[shipped].data == {"x\ufffd": ["\ufffd"]}


async def test_every_change_appends_its_event_in_order(store: OrderStore) -> None:
    orders = await add_many(store, 3)
    await store.transition(orders[0].id, Event.CANCEL, at(10), "no")
    await store.delete_pending(orders[1].id, at(11))
    await store.claim_pending(at(12), 5)
    [held] = await store.acquire("a", 1, LEASE_S)
    await store.write_outcomes(
        "a", [Outcome(held.order.id, held.token, Event.SHIP, at(13), None, {"t": 1})]
    )
    a, b, c = (o.id for o in orders)
    assert await events_of(store) == [
        (EventType.SUBMITTED, a, OrderStatus.PENDING),
        (EventType.SUBMITTED, b, OrderStatus.PENDING),
        (EventType.SUBMITTED, c, OrderStatus.PENDING),
        (EventType.CANCELLED, a, OrderStatus.CANCELLED),
        (EventType.DELETED, b, None),
        (EventType.PROCESSING, c, OrderStatus.PROCESSING),
        (EventType.SHIPPED, c, OrderStatus.SHIPPED),
    ]
    events = await store.read_events(0, 100)
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + 7))
    assert events[3].reason == "no"
    assert events[6].data == {"t": 1}
    assert await store.last_event_seq() == events[-1].seq


async def test_a_refused_change_appends_no_event(store: OrderStore) -> None:
    holds = await held_orders(store, 1)
    [(order_id, token)] = holds.items()
    before = await events_of(store)
    with pytest.raises(NotHeld):
        await store.transition(order_id, Event.SHIP, at(3), hold=Hold("b", token))
    with pytest.raises(IllegalTransition):
        await store.transition(order_id, Event.RETRY, at(3))
    with pytest.raises(OrderConflict):
        await store.add(await store.get_order(order_id))
    assert await store.write_outcomes("a", [Outcome(order_id, token + 7, Event.SHIP, at(4))]) == [
        False
    ]
    assert await events_of(store) == before


async def test_events_resume_after_any_seq_and_pruned_ones_are_gone(store: OrderStore) -> None:
    await add_many(store, 10)
    await store.sequence_events()
    everything = await store.read_events(0, 100)
    assert len(everything) == 10
    first = everything[0].seq
    for n in range(10):
        resumed = await store.read_events(first - 1 + n, 3)
        assert [e.seq for e in resumed] == [first + n + k for k in range(min(3, 10 - n))]
    assert await store.prune_events(at(-1), keep=100) == 0  # nothing that old, nor that many
    assert await store.prune_events(at(-1), keep=6) == 4  # beyond the newest 6
    remaining = await store.read_events(first + 3, 100)
    assert [e.seq for e in remaining] == [first + 4 + k for k in range(6)]
    with pytest.raises(EventsPruned) as pruned:
        await store.read_events(first - 1, 100)
    assert pruned.value.oldest == first + 4
    assert await store.prune_events(at(7), keep=100) == 3  # dated before at(7): at(4) to at(6)
    later = await store.read_events(first + 6, 100)
    assert [e.seq for e in later] == [first + 7, first + 8, first + 9]
    assert await store.last_event_seq() == first + 9


async def test_seqs_go_on_after_every_event_was_pruned(store: OrderStore) -> None:
    await add_many(store, 3)
    await store.sequence_events()
    last = await store.last_event_seq()
    assert await store.prune_events(at(1000), keep=0) == 3
    order = order_at(50, entropy=9)
    await store.add(order)
    await store.sequence_events()
    [event] = await store.read_events(last, 10)
    assert event.seq == last + 1
    assert event.order_id == order.id
    with pytest.raises(Gone):
        await store.read_events(last - 1, 10)
