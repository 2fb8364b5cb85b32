"""PostgresOrderStore: orders in PostgreSQL, shared by any number of orderflow processes.

The only module that imports the driver: every driver or network error leaves as
StoreUnavailable (503), a duplicate id as OrderConflict. Each method is one statement (or one
short transaction), so it is atomic on its own:

- claims and acquires take rows with ``FOR UPDATE SKIP LOCKED``: no row goes to two callers;
- completion is a conditional UPDATE naming the allowed source statuses and the holder, so a
  late finisher can never overwrite a cancel, a rescue or another process's work;
- NOTIFY wakes the other processes (``orderflow_ready``) and tells a holder that its order was
  cancelled (``orderflow_cancel``); polling covers a lost notification;
- holders renew the lease on their orders with every heartbeat; `rescue_orphans` makes ready
  again what a dead holder's lease left behind, one instance at a time (an advisory lock),
  each row once (row locks, SKIP LOCKED);
- the heartbeat is also the polling fallback for cancels: an order this process held that was
  cancelled, or taken from it, while a notification was lost is reported to `on_cancel` then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from orderflow.domain import (
    Event,
    HistoryEntry,
    Item,
    Order,
    OrderQuery,
    OrderStatus,
    Page,
    next_status,
    order_id_floor,
    sources_of,
    target_of,
)
from orderflow.errors import (
    OrderConflict,
    OrderflowError,
    OrderNotFound,
    StoreUnavailable,
)
from orderflow.store.base import OrderStore
from orderflow.store.migrations import migrate

log = logging.getLogger("orderflow.store.postgres")

READY_CHANNEL = "orderflow_ready"
CANCEL_CHANNEL = "orderflow_cancel"
_RESCUE_LOCK = 0x726573637565  # an advisory lock: one instance rescues at a time
_ABOVE_ALL_IDS = "order_g"  # sorts after every id ("g" follows the hex digits)
_COLUMNS = "id, customer, items, created_at, status, history"
_UPDATED_COLUMNS = ", ".join("o." + column for column in _COLUMNS.split(", "))

# The statements whose plans matter most, kept as data so a test can EXPLAIN them.
# Claim: the oldest pending orders, through the partial index orders_pending.
CLAIM_SQL = (
    "WITH picked AS (SELECT id FROM orders WHERE status = 'pending' AND id < $3"
    "  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " UPDATE orders o SET status = 'processing', updated_at = $1,"
    "  history = o.history || $4::jsonb"
    " FROM picked WHERE o.id = picked.id"
)
# Outcomes of many shipments: only the owner's rows, found through its small index (only
# processing orders have an owner). A status condition here let the planner, its statistics
# taken before a burst of claims, scan every processing order for each batch.
WRITE_OUTCOMES_SQL = (
    "UPDATE orders o SET status = c.target, updated_at = c.at,"
    "  history = o.history || c.entry,"
    "  owner = CASE WHEN c.keep THEN o.owner END,"
    "  lease_expires_at = CASE WHEN c.keep THEN o.lease_expires_at END"
    " FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::jsonb[],"
    "  $5::bool[]) AS c(id, target, at, entry, keep)"
    f" WHERE o.id = c.id AND o.owner = $6 RETURNING {_UPDATED_COLUMNS}"
)

_encode = msgspec.json.Encoder().encode
_decode_items = msgspec.json.Decoder(tuple[Item, ...]).decode
_decode_history = msgspec.json.Decoder(tuple[HistoryEntry, ...]).decode


_no_transaction = contextlib.nullcontext()


def _entry(status: OrderStatus, at: datetime, reason: str | None = None) -> str:
    return _encode([HistoryEntry(status, at, reason)]).decode()


def _ready_again_entry(reason_sql: str) -> str:
    """SQL for a one-entry history array shaped as `HistoryEntry` encodes: processing (ready
    again) at the time in parameter $1 (`timestamp`), with `reason_sql` as the reason."""
    return (
        "jsonb_build_array(jsonb_build_object("
        f"'status', 'processing', 'at', $1::text, 'reason', {reason_sql}))"
    )


def _timestamp(at: datetime) -> str:
    """`at` as a history entry writes it."""
    return _encode(at)[1:-1].decode()


def _to_order(row: Any) -> Order:
    history = _decode_history(row["history"])
    return Order(
        row["id"],
        row["customer"],
        _decode_items(row["items"]),
        row["created_at"],
        OrderStatus(row["status"]),
        history[-1].at,
        history,
    )


# Everything the driver raises: server errors, misuse of a closed or broken connection
# (InterfaceError), and its own internal states after a connection was cut (InternalClientError:
# "cannot switch to state …"), besides the network's own.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Driver and network errors become StoreUnavailable; ours pass through."""
    try:
        yield
    except OrderflowError:
        raise
    except asyncpg.UniqueViolationError as exc:
        raise OrderConflict("an order with that id exists") from exc
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"the database is unavailable: {type(exc).__name__}") from exc


class PostgresOrderStore(OrderStore):
    """Args:
    pool: an asyncpg pool; `connect` makes one.
    dsn: where to open the listening connection for `subscribe`.
    """

    shared = True

    def __init__(self, pool: Any, dsn: str, *, server_settings: dict[str, str] | None = None):
        self._pool = pool
        self._dsn = dsn
        self._server_settings = server_settings or {}
        self._listener: Any = None
        self._callbacks: tuple[Callable[[], object], Callable[[str], object]] | None = None
        self._lease_s = 15.0
        self._closing = False
        # Orders each owner in this process acquired and has not let go of yet: what the
        # heartbeat checks against, to catch a cancel whose notification was lost.
        self._holding: dict[str, set[str]] = {}

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        apply_migrations: bool = True,
        server_settings: dict[str, str] | None = None,
        max_size: int = 10,
        command_timeout_s: float = 10.0,
    ) -> PostgresOrderStore:
        """A store over a new pool to `dsn`; applies migrations first unless told not to.
        A statement that gets no answer within `command_timeout_s` fails as StoreUnavailable.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        with _translated():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                command_timeout=command_timeout_s,
                timeout=10,
                server_settings=server_settings or {},
            )
        store = cls(pool, dsn, server_settings=server_settings)
        if apply_migrations:
            await store.migrate()
        return store

    async def migrate(self) -> list[str]:
        """Apply the schema migrations not applied yet; returns their names, in order."""
        async with self._connection() as connection:
            applied = await migrate(connection)
        for version in applied:
            log.info("applied migration %s", version)
        return applied

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        with _translated():
            async with self._pool.acquire(timeout=5) as connection:
                yield connection

    async def add(self, order: Order) -> None:
        async with self._connection() as db:
            status = await db.execute(
                "INSERT INTO orders (id, customer, items, created_at, status, updated_at, history)"
                " VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7::jsonb) ON CONFLICT (id) DO NOTHING",
                order.id,
                order.customer,
                _encode(order.items).decode(),
                order.timestamp,
                order.status.value,
                order.updated_at,
                _encode(order.history).decode(),
            )
            if status == "INSERT 0 0":
                raise OrderConflict(f"an order with id {order.id!r} exists")
            if order.status is OrderStatus.PROCESSING:
                await db.execute("SELECT pg_notify($1, '')", READY_CHANNEL)

    async def find_order(self, order_id: str) -> Order | None:
        async with self._connection() as db:
            row = await db.fetchrow(f"SELECT {_COLUMNS} FROM orders WHERE id = $1", order_id)
        return None if row is None else _to_order(row)

    async def list_orders(self, query: OrderQuery) -> Page:
        sql, args = self._list_sql(query)
        async with self._connection() as db:
            rows = await db.fetch(sql, *args)
        orders = [_to_order(row) for row in rows[: query.limit]]
        return Page(orders, orders[-1].id if len(rows) > query.limit else None)

    @staticmethod
    def _list_sql(query: OrderQuery) -> tuple[str, list[Any]]:
        """The listing's statement and arguments: an id range, so a primary key range scan (or
        one on (status, id)), one row more than the page to know whether more follow."""
        low = "" if query.start is None else order_id_floor(query.start)
        high = _ABOVE_ALL_IDS if query.end is None else order_id_floor(query.end)
        where = "id >= $1 AND id > $2 AND id < $3"
        args: list[Any] = [low, query.cursor or "", high, query.limit + 1]
        if query.status is not None:
            where += " AND status = $5"
            args.append(query.status.value)
        return f"SELECT {_COLUMNS} FROM orders WHERE {where} ORDER BY id LIMIT $4", args

    async def delete_pending(self, order_id: str) -> None:
        async with self._connection() as db:
            status = await db.execute(
                "DELETE FROM orders WHERE id = $1 AND status = 'pending'", order_id
            )
            if status == "DELETE 1":
                return
            current = await db.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
        if current is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        raise OrderConflict(f"only pending orders can be deleted; this one is {current}")

    async def transition(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None = None,
        *,
        owner: str | None = None,
    ) -> Order:
        target = target_of(event)
        # Leaving processing, or handing back, ends the hold.
        keeps_hold = target is OrderStatus.PROCESSING and event is not Event.HANDBACK
        notify = event is Event.CANCEL or event is Event.HANDBACK
        # One statement, one round trip; a transaction only where a notification goes with it.
        async with self._connection() as db, db.transaction() if notify else _no_transaction:
            row = await db.fetchrow(
                "WITH old AS (SELECT id, owner, status FROM orders WHERE id = $1 FOR UPDATE)"
                " UPDATE orders o SET status = $2, updated_at = $3,"
                "  history = o.history || $4::jsonb,"
                "  owner = CASE WHEN $5 THEN o.owner END,"
                "  lease_expires_at = CASE WHEN $5 THEN o.lease_expires_at END"
                " FROM old WHERE o.id = old.id AND old.status = ANY($6::text[])"
                "  AND ($7::text IS NULL OR old.owner = $7)"
                f" RETURNING {_UPDATED_COLUMNS},"
                "  old.owner AS previous_owner",
                order_id,
                target.value,
                at,
                _entry(target, at, reason),
                keeps_hold,
                [s.value for s in sources_of(event)],
                owner,
            )
            if row is None:
                current = await db.fetchrow(
                    "SELECT status, owner FROM orders WHERE id = $1", order_id
                )
            elif event is Event.CANCEL and row["previous_owner"] is not None:
                await db.execute("SELECT pg_notify($1, $2)", CANCEL_CHANNEL, order_id)
            elif event is Event.HANDBACK:
                await db.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
        if owner is not None and (row is None or not keeps_hold):
            self._let_go(owner, order_id)
        elif event is Event.CANCEL:
            for held in self._holding.values():
                held.discard(order_id)
        if row is not None:
            return _to_order(row)
        if current is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        next_status(OrderStatus(current["status"]), event)  # raises IllegalTransition
        raise OrderConflict(f"order {order_id} is no longer held by {owner}")

    async def transition_many(
        self, owner: str, changes: list[tuple[str, Event, datetime, str | None]]
    ) -> list[Order | None]:
        if any(sources_of(event) != (OrderStatus.PROCESSING,) for _, event, _, _ in changes):
            return await super().transition_many(owner, changes)  # not an outcome batch
        targets = [target_of(event) for _, event, _, _ in changes]
        keeps = [
            target is OrderStatus.PROCESSING and event is not Event.HANDBACK
            for target, (_, event, _, _) in zip(targets, changes, strict=True)
        ]
        async with self._connection() as db:
            rows = await db.fetch(
                WRITE_OUTCOMES_SQL,
                [order_id for order_id, _, _, _ in changes],
                [target.value for target in targets],
                [at for _, _, at, _ in changes],
                [
                    _entry(t, at, reason)
                    for t, (_, _, at, reason) in zip(targets, changes, strict=True)
                ],
                keeps,
                owner,
            )
            if any(event is Event.HANDBACK for _, event, _, _ in changes):
                await db.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
        written = {row["id"]: _to_order(row) for row in rows}
        for (order_id, _, _, _), keep in zip(changes, keeps, strict=True):
            if not keep or order_id not in written:
                self._let_go(owner, order_id)
        return [written.get(order_id) for order_id, _, _, _ in changes]

    def _let_go(self, owner: str, order_id: str) -> None:
        held = self._holding.get(owner)
        if held is not None:
            held.discard(order_id)

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        below = _ABOVE_ALL_IDS if created_before is None else order_id_floor(created_before)
        async with self._connection() as db, db.transaction():
            status = await db.execute(
                CLAIM_SQL,
                at,
                limit,
                below,
                _entry(OrderStatus.PROCESSING, at),
            )
            count = int(status.split()[-1])
            if count:
                await db.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
        return count

    async def acquire(self, owner: str, limit: int) -> list[Order]:
        async with self._connection() as db:
            rows = await db.fetch(
                "WITH picked AS (SELECT id FROM orders"
                "  WHERE status = 'processing' AND owner IS NULL"
                "  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE orders o SET owner = $1, attempt = o.attempt + 1,"
                "  lease_expires_at = now() + make_interval(secs => $3)"
                f" FROM picked WHERE o.id = picked.id"
                f" RETURNING {_UPDATED_COLUMNS}",
                owner,
                limit,
                self._lease_s,
            )
        if rows:
            self._holding.setdefault(owner, set()).update(row["id"] for row in rows)
        return sorted((_to_order(row) for row in rows), key=lambda order: order.id)

    async def count_by_status(self) -> dict[OrderStatus, int]:
        async with self._connection() as db:
            rows = await db.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
        return {OrderStatus(row["status"]): row["n"] for row in rows}

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        """Also the polling fallback for cancels: an order `owner` acquired here that is no
        longer its own, because it was cancelled or rescued meanwhile, goes to `on_cancel`."""
        self._lease_s = lease_s
        known = set(self._holding.get(owner, ()))  # before the UPDATE: acquired and committed
        async with self._connection() as db:
            rows = await db.fetch(
                "UPDATE orders SET lease_expires_at = now() + make_interval(secs => $2)"
                " WHERE owner = $1 RETURNING id",
                owner,
                lease_s,
            )
            gone = known.difference(row["id"] for row in rows)
            taken: list[str] = []
            if gone:
                # Gone also when we finished it ourselves a moment ago: only a cancel or another
                # holder (or none: rescued) means a shipment of ours should stop.
                taken = [
                    row["id"]
                    for row in await db.fetch(
                        "SELECT id FROM orders WHERE id = ANY($1::text[]) AND (status = 'cancelled'"
                        " OR (status = 'processing' AND owner IS DISTINCT FROM $2))",
                        sorted(gone),
                        owner,
                    )
                ]
                self._holding.get(owner, set()).difference_update(taken)
        if self._callbacks is not None:
            for order_id in taken:
                self._callbacks[1](order_id)
            if self._listener is None or self._listener.is_closed():
                await self._listen()  # the listening connection was lost: listen again
                self._callbacks[0]()  # and whatever it missed may be ready now

    async def rescue_orphans(self, at: datetime) -> int:
        # Leases are measured on the database's clock alone; `at` only dates the history. Row
        # locks would keep two rescuers from taking one order; the lock keeps them from racing.
        async with self._connection() as db, db.transaction():
            if not await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RESCUE_LOCK):
                return 0  # another instance is rescuing right now
            status = await db.execute(
                "WITH lost AS (SELECT id, owner FROM orders"
                "  WHERE owner IS NOT NULL AND lease_expires_at < now()"
                "  FOR UPDATE SKIP LOCKED)"
                " UPDATE orders o SET owner = NULL, lease_expires_at = NULL, updated_at = $2,"
                "  history = o.history || "
                + _ready_again_entry("'rescued: the lease of ' || lost.owner || ' ran out'")
                + " FROM lost WHERE o.id = lost.id",
                _timestamp(at),
                at,
            )
            count = int(status.split()[-1])
            if count:
                await db.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
        if count:
            log.warning("rescued %d orders whose holder stopped heartbeating", count)
        return count

    async def retire(self, owner: str, at: datetime) -> None:
        # A clean stop handed everything back already; this is the safety net.
        self._holding.pop(owner, None)
        async with self._connection() as db, db.transaction():
            status = await db.execute(
                "UPDATE orders SET owner = NULL, lease_expires_at = NULL, updated_at = $2,"
                "  history = history || "
                + _ready_again_entry("'handed back: ' || $3::text || ' stopped'")
                + " WHERE owner = $3",
                _timestamp(at),
                at,
                owner,
            )
            if status != "UPDATE 0":
                await db.execute("SELECT pg_notify($1, '')", READY_CHANNEL)

    async def subscribe(
        self, on_ready: Callable[[], object], on_cancel: Callable[[str], object]
    ) -> None:
        self._callbacks = (on_ready, on_cancel)
        await self._listen()

    async def _listen(self) -> None:
        assert self._callbacks is not None
        on_ready, on_cancel = self._callbacks
        with _translated():
            listener = await asyncpg.connect(
                self._dsn, timeout=10, server_settings=self._server_settings
            )
            await listener.add_listener(READY_CHANNEL, lambda *_: on_ready())
            await listener.add_listener(
                CANCEL_CHANNEL, lambda _conn, _pid, _channel, order_id: on_cancel(order_id)
            )
        listener.add_termination_listener(self._on_listener_lost)
        self._listener = listener

    def _on_listener_lost(self, _connection: Any) -> None:
        if not self._closing:
            log.warning("lost the notification connection; polling until back")

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            if self._listener is not None:
                await self._listener.close(timeout=5)
        try:
            # A connection still checked out (a request cut off by shutdown) must not hold us.
            await asyncio.wait_for(self._pool.close(), timeout=5)
        except TimeoutError:
            self._pool.terminate()
        except Exception:  # closing: nothing left to do about it
            log.debug("closing the pool failed", exc_info=True)
