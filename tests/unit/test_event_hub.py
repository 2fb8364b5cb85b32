"""The event hub over the in-memory store: a live reader misses nothing between its catch-up and
the live events; a reader that falls behind, or that was sent its byte budget, is ended after
a whole message; closing the hub ends every stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from orderflow.domain import Item, new_order, new_order_id
from orderflow.events import EventFilter, EventHub, sse
from orderflow.store.memory import InMemoryOrderStore
from tests.conftest import ManualClock


async def add(store: InMemoryOrderStore, count: int, start: int = 0) -> None:
    at = ManualClock().now()
    for n in range(start, start + count):
        order = new_order(new_order_id(at, entropy=n), f"c{n}", (Item("W", 1),), at)
        assert await store.add(order) is None


async def started(store: InMemoryOrderStore, **options: float) -> EventHub:
    hub = EventHub(store, poll_s=60, **options)  # type: ignore[arg-type]
    store.watch_events(hub.wake)
    await hub.start()
    return hub


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def ids(body: bytes) -> list[int]:
    return [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")]


async def test_a_reader_resuming_gets_the_past_then_the_live_events_once_each() -> None:
    store = InMemoryOrderStore()
    await add(store, 5)
    hub = await started(store)
    stream = hub.stream(2, EventFilter())
    assert await anext(stream) == b"retry: 2000\n\n"
    past = [await anext(stream) for _ in range(3)]
    await add(store, 2, start=5)
    live = await anext(stream)
    await hub.close()
    rest = await read_all(stream)
    assert ids(b"".join(past)) == [3, 4, 5]
    assert ids(live + rest) == [6, 7]


async def test_a_reader_that_falls_behind_is_ended_after_a_whole_message() -> None:
    store = InMemoryOrderStore()
    hub = await started(store, queue_limit=3)
    stream = hub.stream(None, EventFilter())
    assert await anext(stream) == b"retry: 2000\n\n"
    await add(store, 10)  # the reader takes nothing meanwhile
    await hub.pump_once()
    assert await read_all(stream) == b""  # what was queued is dropped: it resumes from the log
    assert not hub.readers
    await hub.close()


async def test_a_stream_ends_once_it_sent_its_byte_budget() -> None:
    store = InMemoryOrderStore()
    await add(store, 50)
    hub = await started(store, stream_bytes=1000)
    body = await read_all(hub.stream(0, EventFilter()))  # ends by itself
    sent = ids(body)
    assert sent == list(range(1, len(sent) + 1))
    assert 1000 <= len(body) - len(b"retry: 2000\n\n") < 1500
    assert body.endswith(b"\n\n")
    assert not hub.readers
    await hub.close()


async def test_closing_the_hub_ends_every_stream_and_later_ones_at_once() -> None:
    store = InMemoryOrderStore()
    hub = await started(store)
    stream = hub.stream(None, EventFilter())
    assert await anext(stream) == b"retry: 2000\n\n"
    await hub.close()
    assert await read_all(stream) == b""
    assert await read_all(hub.stream(None, EventFilter())) == b"retry: 2000\n\n"


async def test_events_offered_again_up_to_a_readers_start_are_not_sent_twice() -> None:
    """A pump read that began before a first reader came (and moved the hub's position on)
    offers events the reader's catch-up already covers: they are not sent again, and the
    hub's position does not go back."""
    store = InMemoryOrderStore()
    await add(store, 5)
    hub = await started(store)
    stream = hub.stream(2, EventFilter())
    assert await anext(stream) == b"retry: 2000\n\n"
    [subscription] = hub.readers
    assert subscription.position == 5
    for event in await store.read_events(0, 10):  # the late read's events
        subscription.offer(event, sse(event))
    await add(store, 1, start=5)
    await hub.pump_once()
    assert hub.position == 6
    await hub.close()
    assert ids(b"".join([chunk async for chunk in stream])) == [3, 4, 5, 6]
