"""EventHub: reads the store's event log once per process and fans it out to live readers
(Server-Sent Events streams, the dashboard), each through a bounded queue.

A reader that resumes (Last-Event-ID) is caught up from the store first, then served live, with
nothing missed and nothing repeated: it subscribes before catching up, so every event after the
hub's position at that moment reaches its queue, and the catch-up stops at that position. A
reader whose queue overflows (it reads slower than events come) is cut off, to come back with
Last-Event-ID, rather than grow memory. The store says when there may be new events (in
memory: on each append; PostgreSQL: a NOTIFY once events are numbered); the hub also polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import msgspec

from orderflow.domain import EventType, OrderEvent, OrderStatus
from orderflow.errors import EventsPruned, Gone, StoreUnavailable
from orderflow.store.base import OrderStore
from orderflow.supervise import OutageLog, Wakeup, supervised

log = logging.getLogger("orderflow.events")

_BATCH = 1000
_encode = msgspec.json.Encoder().encode
KEEP_ALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants; an empty condition takes all."""

    order_id: str | None = None
    types: frozenset[EventType] = frozenset()
    status: OrderStatus | None = None

    def __call__(self, event: OrderEvent) -> bool:
        return (
            (self.order_id is None or event.order_id == self.order_id)
            and (not self.types or event.type in self.types)
            and (self.status is None or event.status is self.status)
        )


class Reader:
    """One live reader's messages, at most `limit` waiting. `overflowed` once it fell that far
    behind: its stream ends, and the reader resumes from the store. (A deque and one waiter
    rather than an asyncio.Queue: the hub offers every event to every reader.)"""

    def __init__(self, hub: EventHub, position: int, wanted: EventFilter, limit: int) -> None:
        self.hub = hub
        self.position = position  # events up to here are the catch-up's, after it the queue's
        self.wanted = wanted
        self.overflowed = False
        self.quiet = True  # nothing sent since the last keep-alive round
        self._limit = limit
        self._messages: deque[bytes | None] = deque()  # SSE messages; None: the end
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, event: OrderEvent, message: bytes) -> None:
        if self.overflowed or event.seq <= self.position or not self.wanted(event):
            return  # (up to its position, the reader's catch-up has them)
        if len(self._messages) >= self._limit:
            self.overflowed = True
            self._end(drop=True)  # what is queued is of no use now: it resumes from the log
            return
        self._put(message)
        self.quiet = False

    def keep_alive(self) -> None:
        if len(self._messages) < self._limit:
            self._put(KEEP_ALIVE)

    def _end(self, *, drop: bool = False) -> None:
        """End the stream after what is queued (`drop`: at once)."""
        if drop:
            self._messages.clear()
        self._put(None)

    def _put(self, message: bytes | None) -> None:
        self._messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, most: int) -> bytes | None:
        """The next messages, at most `most` of them joined in one chunk; None at the end."""
        messages = self._messages
        while not messages:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        taken: list[bytes] = []
        while messages and len(taken) < most:
            message = messages[0]
            if message is None:
                break  # left in place: the next take ends the stream
            taken.append(message)
            messages.popleft()
        return b"".join(taken) if taken else None

    def close(self) -> None:
        self.hub.unsubscribe(self)


class EventHub:
    """Args:
    poll_s: how often to look for events when nobody said there are some.
    queue_limit: the most events a reader may fall behind before it is cut off.
    stream_bytes: after how many bytes a stream ends (after the chunk that crossed it: at most
        256 messages more), and its reader resumes. The server under RSGI takes every chunk
        at once, however slowly the client reads, so this, not the queue, is what bounds the
        memory a stalled reader holds there.
    """

    def __init__(
        self,
        store: OrderStore,
        *,
        poll_s: float = 1.0,
        queue_limit: int = 1000,
        keep_alive_s: float = 15.0,
        stream_bytes: int = 4 << 20,
    ) -> None:
        self._store = store
        self._stream_bytes = stream_bytes
        self._keep_alive_s = keep_alive_s
        self._poll_s = poll_s
        self._queue_limit = queue_limit
        self._subscriptions: set[Reader] = set()
        self._wake = Wakeup()
        self._task: asyncio.Task[None] | None = None
        self._keep_alive: asyncio.Task[None] | None = None
        self.position = 0  # the seq of the last event handed out
        self._closed = False

    async def start(self) -> None:
        self._wake.bind()
        self.position = await self._store.last_event_seq()
        self._task = asyncio.create_task(
            supervised(
                self.pump_once,
                every_s=self._poll_s,
                log=OutageLog(log, "reading events"),
                wake=self._wake,
            ),
            name="orderflow-event-hub",
        )
        self._keep_alive = asyncio.create_task(self._keep_alives(), name="orderflow-keep-alive")

    async def _keep_alives(self) -> None:
        """A comment line to every stream that was quiet for a round: one timer for all."""
        while True:
            await asyncio.sleep(self._keep_alive_s)
            for subscription in list(self._subscriptions):
                if subscription.quiet:
                    subscription.keep_alive()
                subscription.quiet = True

    def wake(self) -> None:
        """There may be new events (callable from any thread, and often: with nobody reading it
        costs one check, and a reader who comes later starts from the store's position)."""
        if self._subscriptions:
            self._wake.set_soon()

    async def close(self) -> None:
        """End every stream (they end cleanly) and stop reading."""
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription._end()
        self._subscriptions.clear()
        for task in (self._task, self._keep_alive):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._keep_alive = None

    async def refresh(self) -> None:
        """With nobody reading, bring the hub's position up to the store's (nobody woke the hub
        meanwhile), so that a first reader starts from now. Raises StoreUnavailable: the route
        calls it before it answers, so an unreachable store is a 503, not a broken stream."""
        if not self._subscriptions and not self._closed:
            last = await self._store.last_event_seq()
            if not self._subscriptions:  # (a reader that came meanwhile keeps its start)
                self.position = max(self.position, last)

    async def ready_to_stream(self, after: int | None) -> None:
        """Raise what a stream resuming after seq `after` (None: from now on) would meet as it
        starts: Gone when the events after `after` were pruned, StoreUnavailable when the store
        does not answer; so that the route answers 410 or 503 rather than a broken stream."""
        if after is not None:
            await self._store.read_events(after, 1)
        await self.refresh()

    async def subscribe(self, wanted: EventFilter) -> Reader:
        """A live reader from the hub's position on (see `refresh`); wakes the hub for anything
        newer."""
        await self.refresh()
        subscription = Reader(self, self.position, wanted, self._queue_limit)
        if self._closed:
            subscription._end()
        else:
            self._subscriptions.add(subscription)
            self._wake.set_soon()
        return subscription

    def unsubscribe(self, subscription: Reader) -> None:
        self._subscriptions.discard(subscription)

    @property
    def readers(self) -> tuple[Reader, ...]:
        """The live readers now."""
        return tuple(self._subscriptions)

    async def pump_once(self) -> None:
        """Hand every event past the hub's position to the readers (what the hub's loop does
        each time it wakes or polls)."""
        while True:
            if not self._subscriptions:  # nobody reads: skip ahead, read nothing
                last = await self._store.last_event_seq()
                if not self._subscriptions:  # (a reader that came meanwhile starts before)
                    self.position = last
                    return
            try:
                events = await self._store.read_events(self.position, _BATCH)
            except Gone:  # pruned before the hub read them: its readers missed events
                log.warning("events after %d were pruned before they were streamed", self.position)
                for subscription in list(self._subscriptions):
                    subscription._end()  # each resumes with Last-Event-ID, and hears 410
                self._subscriptions.clear()
                self.position = await self._store.last_event_seq()
                return
            subscriptions = list(self._subscriptions)
            for event in events:
                message = sse(event)  # encoded once, however many readers take it
                for subscription in subscriptions:
                    subscription.offer(event, message)
            if events:  # (a first reader may have moved the position on during the read)
                self.position = max(self.position, events[-1].seq)
            if len(events) < _BATCH:
                return

    async def stream(self, after: int | None, wanted: EventFilter) -> AsyncIterator[bytes]:
        """Server-Sent Events: the events after seq `after` (None: from now on) that `wanted`
        takes, then live ones (several to a chunk when they come together), with keep-alive
        comments, until the reader falls behind, the stream sent its `stream_bytes`, or the
        hub closes. Each ends after a whole message, so the reader resumes after its last id.
        The route checks `after` (410) and the store (503) first; should the store fail or
        prune since, the stream just ends, and the reader hears why when it comes back.
        """
        try:
            subscription = await self.subscribe(wanted)
        except StoreUnavailable:
            return
        budget = self._stream_bytes
        try:
            yield b"retry: 2000\n\n"
            if after is not None and after < subscription.position:
                try:
                    async for event in self._catch_up(after, subscription.position, wanted):
                        past = sse(event)
                        yield past
                        budget -= len(past)
                        if budget <= 0:
                            return
                except (Gone, StoreUnavailable):
                    return
            while budget > 0 and (chunk := await subscription.take(256)) is not None:
                yield chunk
                budget -= len(chunk)
        finally:
            subscription.close()

    async def _catch_up(
        self, after: int, until: int, wanted: EventFilter
    ) -> AsyncIterator[OrderEvent]:
        while after < until:
            events = await self._store.read_events(after, min(_BATCH, until - after))
            if not events:
                return
            for event in events:
                if event.seq > until:
                    return
                if wanted(event):
                    yield event
            after = events[-1].seq

    async def page(
        self, after: int | None, limit: int, wanted: EventFilter
    ) -> tuple[list[OrderEvent], int]:
        """Past events after `after` (None: from the oldest kept) that `wanted` takes, at most
        `limit`, and the seq to go on from (it moves past events the filter skipped). Looks at
        no more than 10 pages' worth of events, so a rare filter answers a short page rather
        than read the whole log."""
        found: list[OrderEvent] = []
        position = after or 0
        for _ in range(10):
            try:
                events = await self._store.read_events(position, max(limit, _BATCH))
            except EventsPruned as pruned:
                if found:  # what was found goes out; the next poll hears 410
                    return found, position
                if after is not None:  # the reader would miss events
                    raise
                position = pruned.oldest - 1
                continue
            for event in events:
                position = event.seq
                if wanted(event):
                    found.append(event)
                    if len(found) == limit:
                        return found, position
            if len(events) < max(limit, _BATCH):
                break
        return found, position


def sse(event: OrderEvent) -> bytes:
    """One event as a Server-Sent Events message: id, event type, the event as JSON data."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), _encode(event))


def parse_types(values: Iterable[str]) -> frozenset[EventType]:
    """Event types from query values; ValueError naming the first unknown one."""
    known = {t.value: t for t in EventType}
    types = set()
    for value in values:
        if value not in known:
            raise ValueError(value)
        types.add(known[value])
    return frozenset(types)


__all__ = ["KEEP_ALIVE", "EventFilter", "EventHub", "Gone", "Reader", "parse_types", "sse"]
