"""OutcomeWriter: how the processor records what became of a shipment.

Every write names the hold (owner, token) it is made under, and waits out an outage of the
store, so no outcome is lost to it. With a store shared between processes, the outcomes of many
workers go in one round trip (`OrderStore.write_outcomes`): the database, not Python, is what
limits throughput there. A store that refuses an outcome's data (StoreRefusedData: a bug, not
an outage) is never waited out: the others of its batch are written alone, and it is written
again without its reason and result, so its order still moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from orderflow.domain import Order, Outcome, target_of
from orderflow.errors import OutcomeUnknown, StoreRefusedData, StoreUnavailable
from orderflow.store.base import OrderStore
from orderflow.supervise import Backoff

log = logging.getLogger("orderflow.outcomes")

_BATCH = 500
_GIVE_UP_AFTER = 3  # tries in an outage once the processor is stopping
_REFUSED = "(the store refused this reason: see the service's log)"


class OutcomeWriter:
    """Args:
    owner: whose holds the outcomes are written under.
    giving_up: when true (stopping), a write tries a few times in an outage, then raises
        StoreUnavailable (the order is then left to `OrderStore.retire`, or to rescue).
    """

    def __init__(self, store: OrderStore, owner: str, giving_up: Callable[[], bool]) -> None:
        self._store = store
        self._owner = owner
        self._giving_up = giving_up
        self._backoff = Backoff(0.05, max_s=2.0)
        self._queue: list[tuple[Outcome, asyncio.Future[Order | None]]] = []
        self._queued = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Batch writes from now on, if the store is shared (one process: each writes alone)."""
        if self._store.shared:
            self._task = asyncio.create_task(self._write_batches(), name="orderflow-writer")

    async def close(self) -> None:
        """Stop batching; call when no write is under way."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def write(self, outcome: Outcome) -> Order | None:
        """Write `outcome`; returns the order as written, or None when the order is not held
        under that hold any more (cancelled, rescued, acquired again).

        Raises:
            StoreUnavailable: only when giving up.
        """
        if self._task is None:
            [written] = await self._refused_alone([outcome])
            return written
        future: asyncio.Future[Order | None] = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, future))
        self._queued.set()
        return await future

    async def _refused_alone(self, outcomes: list[Outcome]) -> list[Order | None]:
        """`_patiently`; when the store refuses the data of a batch, each outcome is written on
        its own, and one it still refuses is written without its reason and result."""
        try:
            return await self._patiently(outcomes)
        except StoreRefusedData as exc:  # no write of the batch went through
            if len(outcomes) > 1:
                return [written for one in outcomes for written in await self._refused_alone([one])]
            [outcome] = outcomes
            if outcome.reason is None and outcome.shipment is None:
                raise
            log.error(
                "order_id=%s the store refused outcome %s; writing it without its reason and"
                " result", outcome.order_id, outcome.event.value, exc_info=exc,
            )  # fmt: skip
            bare = msgspec.structs.replace(
                outcome, reason=None if outcome.reason is None else _REFUSED, shipment=None
            )
            return await self._patiently([bare])

    async def _patiently(self, outcomes: list[Outcome]) -> list[Order | None]:
        """Write `outcomes`, waiting out an outage. After an answer was lost (OutcomeUnknown),
        what did go through is found in the orders' histories and not written twice."""
        results: list[Order | None] = [None] * len(outcomes)
        todo = list(range(len(outcomes)))
        unknown = False
        for attempt in range(1, 1_000_000):
            try:
                if unknown:
                    for i in list(todo):
                        found = await self._written_before(outcomes[i])
                        if found is not None:
                            results[i] = found
                            todo.remove(i)
                    if not todo:
                        return results
                written = await self._store.write_outcomes(self._owner, [outcomes[i] for i in todo])
            except StoreUnavailable as exc:
                unknown = unknown or isinstance(exc, OutcomeUnknown)
                if self._giving_up() and attempt >= _GIVE_UP_AFTER:
                    raise
                await asyncio.sleep(self._backoff.delay_s(attempt))
                continue
            for i, order in zip(todo, written, strict=True):
                results[i] = order
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    async def _written_before(self, outcome: Outcome) -> Order | None:
        order = await self._store.find_order(outcome.order_id)
        if order is None:
            return None
        mine = any(
            entry.at == outcome.at and entry.status is target_of(outcome.event)
            for entry in order.history
        )
        return order if mine else None

    async def _write_batches(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                batch = self._queue[:_BATCH]
                del self._queue[:_BATCH]
                try:
                    results = await self._refused_alone([outcome for outcome, _ in batch])
                except Exception as exc:  # the writer must outlive any failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its writer may have been cancelled meanwhile
                        future.set_result(result)
