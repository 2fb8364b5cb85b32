"""Many threads, each with its own event loop, and many tasks hammer one InMemoryOrderStore;
afterwards nothing is lost or duplicated and every index agrees with the rows."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
from collections import Counter

from orderflow.domain import Event, OrderStatus
from orderflow.errors import IllegalTransition, OrderConflict, OrderNotFound
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import ManualClock, make_order

THREADS = 8
TASKS = 8
ORDERS_PER_TASK = 40


def test_threads_and_tasks_lose_nothing_and_never_hand_an_order_twice() -> None:
    store = InMemoryOrderStore()
    clock_lock = threading.Lock()
    clock = ManualClock()
    added: list[str] = []
    deleted: list[str] = []
    acquired: Counter[str] = Counter()
    claimed_total = 0
    record = threading.Lock()

    def now():  # type: ignore[no-untyped-def]
        with clock_lock:
            return clock.now()

    async def worker(seed: int) -> None:
        nonlocal claimed_total
        rng = random.Random(seed)
        owner = f"owner-{seed}"
        mine: list[str] = []
        for n in range(ORDERS_PER_TASK):
            with clock_lock:
                order = make_order(clock, customer=f"c{seed}-{n}")
            await store.add(order)
            mine.append(order.id)
            with record:
                added.append(order.id)
            roll = rng.random()
            if roll < 0.2:
                claimed = await store.claim_pending(now(), rng.randint(1, 5))
                with record:
                    claimed_total += claimed
            elif roll < 0.45:
                held = await store.acquire(owner, rng.randint(1, 4))
                with record:
                    acquired.update(o.id for o in held)
                for order in held:
                    event = rng.choice([Event.SHIP, Event.FAIL, Event.RELEASE, Event.RETRY])
                    try:  # another task may have cancelled it meanwhile
                        await store.transition(order.id, event, now(), owner=owner)
                        if event is Event.RETRY:
                            await store.transition(order.id, Event.SHIP, now(), owner=owner)
                    except IllegalTransition:
                        assert (await store.get_order(order.id)).status is OrderStatus.CANCELLED
            elif roll < 0.6:
                victim = rng.choice(mine)
                with contextlib.suppress(OrderConflict, OrderNotFound):
                    await store.transition(victim, Event.CANCEL, now())
            elif roll < 0.7:
                victim = rng.choice(mine)
                try:
                    await store.delete_pending(victim)
                    with record:
                        deleted.append(victim)
                except (OrderConflict, OrderNotFound):
                    pass
            if n % 7 == 0:
                await asyncio.sleep(0)

    def thread_main(thread_no: int) -> None:
        async def run() -> None:
            await asyncio.gather(*(worker(thread_no * 100 + t) for t in range(TASKS)))

        asyncio.run(run())

    threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    assert len(added) == len(set(added)) == THREADS * TASKS * ORDERS_PER_TASK
    assert list(store.check_invariants()) == []
    assert len(store) == len(added) - len(deleted)

    async def check() -> None:
        counts = await store.count_by_status()
        assert sum(counts.values()) == len(store)
        remaining = set(added) - set(deleted)
        for order_id in remaining:
            order = await store.get_order(order_id)
            statuses = [h.status for h in order.history]
            assert statuses[0] is OrderStatus.PENDING
            assert statuses.count(OrderStatus.SHIPPED) <= 1
            assert order.status is statuses[-1]
        # every order was acquired at most once per time it was claimed
        for order_id, times in acquired.items():
            if order_id in remaining:
                history = (await store.get_order(order_id)).history
                claims = sum(
                    1
                    for before, after in itertools.pairwise(history)
                    if before.status is OrderStatus.PENDING
                    and after.status is OrderStatus.PROCESSING
                )
                assert times <= claims

    asyncio.run(check())
    assert claimed_total >= sum(acquired.values()) - 0  # nothing acquired that was not claimed
