"""PostgresOrderStore: orders in PostgreSQL, shared by any number of orderflow processes.

The only module that imports the driver. Every statement is in `postgres_sql`; each method is
one statement, so atomic on its own:

- claims and acquires take rows with ``FOR UPDATE SKIP LOCKED``: no row goes to two callers;
- a holder's write names the hold (owner, token) it must still be under, so a late or stale
  holder can never overwrite a cancel, a rescue or anyone's later work;
- NOTIFY wakes the other processes (``orderflow_ready``) and tells a holder that its order was
  cancelled (``orderflow_cancel``); polling covers a lost notification;
- events are numbered once their transactions are over (`PostgresEventLog`), and the counts by
  status are folded in as they are (`PostgresCounts`);
- holders renew the lease on what they hold with every heartbeat; `rescue_expired` makes ready
  again what a silent holder's lease left behind, one instance at a time (an advisory lock).

Errors leave as ours: a duplicate id as OrderConflict; a value the server refused as
StoreRefusedData; anything else from the driver or the network as StoreUnavailable when the
statement cannot have run (no connection, or the server refused it), and as OutcomeUnknown when
the connection broke while a change was in flight. A connection that breaks after its
statement's answer arrived (while going back to the pool) changes nothing about that answer.

An outage is said once, when it starts and when it ends (`Database.outage`), whatever meets
it; the pool keeps no floor of connections, so the driver has none to restore (and to log
about) during an outage: the service's own loops keep a connection in use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from orderflow.domain import (
    EVENT_TYPE,
    Event,
    Held,
    Hold,
    Order,
    OrderEvent,
    OrderFilter,
    OrderQuery,
    OrderStatus,
    Outcome,
    Page,
    Parcel,
    Stats,
    ends_hold,
    next_status,
    order_id_floor,
    order_id_time,
    prefix_bounds,
    reversed_id,
    search_key,
    sources_of,
    target_of,
)
from orderflow.errors import (
    IllegalTransition,
    NotHeld,
    OrderNotFound,
    StoreUnavailable,
)
from orderflow.store import postgres_sql as sql
from orderflow.store.base import (
    IdempotencyRecord,
    Instance,
    InstanceBeat,
    MinuteCounts,
    OrderStore,
)
from orderflow.store.migrations import migrate
from orderflow.store.postgres_db import Database, Listener
from orderflow.store.postgres_events import PostgresCounts, PostgresEventLog
from orderflow.store.postgres_history import PostgresHistory
from orderflow.store.postgres_rows import (
    CONNECTION_LOST,
    encode,
    entry,
    json_or_none,
    timestamp,
    to_order,
)

log = logging.getLogger("orderflow.store.postgres")

_MAX_WALK = 10_000  # orders a bulk action's batch looks at
SEARCH_BOUND = 10_000  # matches of a customer prefix past which a search walks the id order
# Our transactions are a few statements, milliseconds apart even on a busy loop: one idle this
# long belongs to a paused process, and what it locks is freed well within the default lease.
IDLE_TRANSACTION_TIMEOUT_S = 5.0


async def _keep_session(_connection: Any) -> None:
    """A connection goes back to the pool as it is. The driver's default resets the session (a
    round trip of four statements on every release, a third of all the round trips of
    claim-and-ship); ours leave nothing in a session to reset: no settings, no LISTEN (the
    listener has a connection of its own), only transaction-scoped advisory locks. An open
    transaction is still rolled back by the pool itself."""


#: The oldest server the statements run on (the minutes' `date_bin` came in 14).
OLDEST_SERVER = 14


class PostgresOrderStore(OrderStore):
    """Args:
    pool: an asyncpg pool; `connect` makes one.
    dsn: where to open the listening connection for `subscribe`.
    poll_s: how often to look for what a lost notification did not say (events numbered
        elsewhere, the listening connection lost).
    search_bound: see `list_statement`.
    """

    shared = True

    def __init__(
        self,
        pool: Any,
        dsn: str,
        *,
        server_settings: dict[str, str] | None = None,
        poll_s: float = 1.0,
        search_bound: int = SEARCH_BOUND,
    ) -> None:
        if search_bound < 1:
            raise ValueError(f"search_bound must be at least 1, not {search_bound}")
        self.search_bound = search_bound
        self.database = Database(pool)
        self.outage = self.database.outage
        self._dsn = dsn
        self.server_settings = server_settings or {}
        self._poll_s = poll_s
        self._events = PostgresEventLog(self.database, poll_s=poll_s)
        self._counts = PostgresCounts(self.database, self._events)
        self._history = PostgresHistory(self.database, self._counts)
        self._listener: Listener | None = None
        # Where the last full batch of a trigger (its created_before) stopped claiming.
        self._claimed_to: tuple[datetime, str] | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        apply_migrations: bool = True,
        server_settings: dict[str, str] | None = None,
        max_size: int = 10,
        command_timeout_s: float = 10.0,
        idle_transaction_timeout_s: float = IDLE_TRANSACTION_TIMEOUT_S,
        poll_s: float = 1.0,
        search_bound: int = SEARCH_BOUND,
    ) -> PostgresOrderStore:
        """A store over a new pool to `dsn`; applies migrations first unless told not to.
        A statement that gets no answer within `command_timeout_s` fails. PostgreSQL ends a
        session of ours that leaves a transaction idle for `idle_transaction_timeout_s`: a
        process paused between two statements of a transaction (SIGSTOP, a stalled host) would
        otherwise keep its locks (a rescue's or event numbering's advisory lock, row locks) and
        stop every other instance's rescue until it woke.

        Raises:
            StoreUnavailable: the database cannot be reached (the message says why).
        """
        server_settings = {
            "idle_in_transaction_session_timeout": str(round(idle_transaction_timeout_s * 1000)),
            **(server_settings or {}),
        }
        try:
            pool = await asyncpg.create_pool(
                dsn,
                init_size=1,  # a database that cannot be reached fails the start
                min_size=0,  # no floor: see the module docstring
                max_size=max_size,
                command_timeout=command_timeout_s,
                timeout=10,
                server_settings=server_settings,
                reset=_keep_session,
            )
        except asyncpg.PostgresError as exc:  # the server's own words: no such database, …
            raise StoreUnavailable(f"the database refused the connection: {exc}") from exc
        except (*CONNECTION_LOST, ValueError) as exc:
            raise StoreUnavailable(f"cannot connect to the database: {exc}") from exc
        async with pool.acquire() as connection:
            version = connection.get_server_version()
        if version.major < OLDEST_SERVER:
            await pool.close()
            raise StoreUnavailable(
                f"PostgreSQL {OLDEST_SERVER} or newer is needed; this server runs"
                f" {version.major}.{version.minor}"
            )
        store = cls(
            pool, dsn, server_settings=server_settings, poll_s=poll_s, search_bound=search_bound
        )
        if apply_migrations:
            try:
                await store.migrate()
            except BaseException:
                await store.close()
                raise
        return store

    async def migrate(self) -> list[str]:
        """Apply the schema migrations not applied yet; returns their names, in order."""
        async with self.database.connection(changing=True) as connection:
            applied = await migrate(connection)
        for version in applied:
            log.info("applied migration %s", version)
        return applied

    async def ping(self) -> None:
        async with self.database.connection() as db:
            await db.fetchval(sql.PING, timeout=2)

    # -- orders ------------------------------------------------------------------------------

    async def add(
        self, order: Order, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        async with self.database.connection(changing=True) as db:
            inserted = await db.fetchval(
                sql.INSERT_ORDER,
                order.id,
                order.customer,
                encode(order.items).decode(),
                order.timestamp,
                order.status.value,
                order.updated_at,
                encode(order.history).decode(),
                json_or_none(order.shipment),
                None if idempotency is None else idempotency.key,
                None if idempotency is None else idempotency.fingerprint,
                None if idempotency is None else idempotency.created_at,
                search_key(order.customer),
            )
            if not inserted:
                assert idempotency is not None  # without a key the INSERT raised or inserted
                row = await db.fetchrow(sql.FIND_IDEMPOTENCY, idempotency.key)
                return IdempotencyRecord(*row)
            if order.status is OrderStatus.PROCESSING:
                await db.execute(sql.NOTIFY, sql.READY_CHANNEL, "")
        return None

    async def find_order(self, order_id: str) -> Order | None:
        async with self.database.connection() as db:
            row = await db.fetchrow(sql.FIND_ORDER, order_id)
        return None if row is None else to_order(row)

    async def list_orders(self, query: OrderQuery) -> Page:
        walk = self.search_bound
        async with self.database.connection() as db:
            dense = False
            if query.customer is not None and query.id_tail is None:
                bounds = prefix_bounds(query.customer)
                dense = await db.fetchval(sql.search_count(len(bounds)), *bounds, walk) >= walk
            statement, args = self.list_statement(query, walk=walk if dense else None)
            rows = await db.fetch(statement, *args)
            orders = [to_order(row) for row in rows[: query.limit]]
            if len(rows) > query.limit:
                return Page(orders, orders[-1].id)
            if not dense:
                return Page(orders, None)
            # Fewer matches than the page holds: the walk ended with the range, or it read as
            # many orders as it may, and the next page goes on after the last one it read.
            ended, ended_args = self.walk_end_statement(query, walk)
            return Page(orders, await db.fetchval(ended, *ended_args))

    @staticmethod
    def _range(query: OrderQuery) -> list[Any]:
        """$1 to $3 of a listing: the range's start, the cursor (or where a sort starts),
        the range's end."""
        low = "" if query.start is None else order_id_floor(query.start)
        high = sql.ABOVE_ALL_IDS if query.end is None else order_id_floor(query.end)
        cursor = query.cursor or (sql.ABOVE_ALL_IDS if query.newest else "")
        return [low, cursor, high]

    @classmethod
    def list_statement(cls, query: OrderQuery, *, walk: int | None = None) -> tuple[str, list[Any]]:
        """The listing's statement and its arguments. A customer prefix is read one of two
        ways. One that matches fewer orders than the store's `search_bound` (counted through
        orders_customer, at most that many entries read) is looked up there first and its
        matches sorted (fewer than the bound). A dense one (given `walk`, the bound) walks
        the id order from the cursor, at most `walk` orders, filtering by the key: a page
        ends at `limit` matches or after `walk` orders, whichever comes first (then with
        fewer than `limit` orders and a cursor, as the contract allows). With the matches
        spread over time (at least bound of N orders), a page is found within about
        limit * N / bound orders, the same page the index answers."""
        args: list[Any] = [*cls._range(query), query.limit + 1]
        if query.status is not None:
            args.append(query.status.value)
        customer: tuple[str, ...] = () if query.customer is None else prefix_bounds(query.customer)
        tail: tuple[str, ...] = (
            () if query.id_tail is None else prefix_bounds(reversed_id(query.id_tail))
        )
        args += (*customer, *tail)
        if walk is not None:
            args.append(walk)
        statement = sql.listing(
            query.status is not None, query.newest, len(customer), len(tail), walk is not None
        )
        return statement, args

    @classmethod
    def walk_end_statement(cls, query: OrderQuery, walk: int) -> tuple[str, list[Any]]:
        """The statement that finds the last order a dense search's walk read, if it read
        `walk` of them, and its arguments."""
        args = [*cls._range(query), walk - 1]
        if query.status is not None:
            args.append(query.status.value)
        return sql.walk_end(query.status is not None, query.newest), args

    async def delete_pending(self, order_id: str, at: datetime) -> None:
        async with self.database.connection(changing=True) as db:
            row = await db.fetchrow(sql.DELETE_PENDING, order_id, at)
        if row is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        if not row["deleted"]:
            raise IllegalTransition(f"only pending orders can be deleted; this one is {row[0]}")

    async def transition(
        self,
        order_id: str,
        event: Event,
        at: datetime,
        reason: str | None = None,
        *,
        hold: Hold | None = None,
    ) -> Order:
        target = target_of(event)
        async with self.database.connection(changing=True) as db:
            row = await db.fetchrow(
                sql.TRANSITION,
                order_id,
                target.value,
                at,
                entry(target, at, reason),
                not ends_hold(event),
                [s.value for s in sources_of(event)],
                None if hold is None else hold.owner,
                None if hold is None else hold.token,
                EVENT_TYPE[event].value,
                reason,
                event is Event.CANCEL,
                event is Event.HANDBACK,
            )
        if row is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        if row["id"] is not None:
            return to_order(row)
        next_status(OrderStatus(row["old_status"]), event)  # raises IllegalTransition
        assert hold is not None
        raise NotHeld(f"order {order_id} is not held by {hold.owner} under {hold.token}")

    async def write_outcomes(self, owner: str, outcomes: list[Outcome]) -> list[bool]:
        targets = [target_of(o.event) for o in outcomes]
        async with self.database.connection(changing=True) as db:
            rows = await db.fetch(
                sql.WRITE_OUTCOMES,
                [o.order_id for o in outcomes],
                [o.token for o in outcomes],
                [target.value for target in targets],
                [o.at for o in outcomes],
                [entry(t, o.at, o.reason) for t, o in zip(targets, outcomes, strict=True)],
                [not ends_hold(o.event) for o in outcomes],
                [EVENT_TYPE[o.event].value for o in outcomes],
                [o.reason for o in outcomes],
                [json_or_none(o.shipment) for o in outcomes],
                owner,
            )
        written = {row["id"] for row in rows}
        return [o.order_id in written for o in outcomes]

    async def claim_pending(
        self, at: datetime, limit: int, created_before: datetime | None = None
    ) -> int:
        """The batches of one trigger (the same `created_before`) each start where the one
        before stopped: every batch starting from the oldest pending order walked the index
        entries of every order claimed before it in that trigger (left until a vacuum), and a
        trigger of 100,000 orders spent 26 µs of the database's CPU an order claiming at 50,000
        (10 µs now). The trigger's last batch, the one that finds fewer than `limit` above where
        the one before stopped, looks once more from the oldest, for an order a lock hid from
        an earlier batch."""
        below = sql.ABOVE_ALL_IDS if created_before is None else order_id_floor(created_before)
        cursor = self._claimed_to
        after = cursor[1] if cursor is not None and cursor[0] == created_before else ""
        history = entry(OrderStatus.PROCESSING, at)
        async with self.database.connection(changing=True) as db:
            row = await db.fetchrow(sql.CLAIM, at, limit, below, history, after)
            claimed: int = row["claimed"]
            last: str | None = row["last"]
            if claimed < limit and after:
                more = await db.fetchrow(sql.CLAIM, at, limit - claimed, below, history, "")
                claimed, last = claimed + more["claimed"], more["last"] or last
        self._claimed_to = None
        if created_before is not None and claimed == limit and last is not None:
            self._claimed_to = (created_before, last)
        return claimed

    async def acquire(self, owner: str, limit: int, lease_s: float) -> list[Held]:
        async with self.database.connection(changing=True) as db:
            rows = await db.fetch(sql.ACQUIRE, owner, limit, lease_s)
        held = [Held(Parcel(row["id"], order=to_order(row)), row["attempt"]) for row in rows]
        held.sort(key=lambda h: h.parcel.id)
        return held

    async def renew(
        self, owner: str, holds: Mapping[str, int], lease_s: float, at: datetime
    ) -> set[str]:
        ids = list(holds)
        async with self.database.connection(changing=True) as db:
            rows = await db.fetch(
                sql.RENEW, owner, ids, [holds[i] for i in ids], lease_s, at, timestamp(at)
            )
        renewed = {row["id"] for row in rows if row["renewed"]}
        handed_back = sum(1 for row in rows if row["renewed"] is False)
        if handed_back:
            log.warning("handed back %d orders %s held without knowing", handed_back, owner)
        return set(ids) - renewed

    async def rescue_expired(self, at: datetime) -> int:
        async with self.database.connection(changing=True) as db, db.transaction():
            if not await db.fetchval(sql.TRY_LOCK, sql.RESCUE_LOCK):
                return 0  # another instance is rescuing right now
            rescued: int = await db.fetchval(sql.RESCUE, at, timestamp(at))
        if rescued:
            log.warning("rescued %d orders whose holder stopped renewing its lease", rescued)
        return rescued

    async def retire(self, owner: str, at: datetime) -> int:
        async with self.database.connection(changing=True) as db:
            retired: int = await db.fetchval(sql.RETIRE, at, timestamp(at), owner)
        return retired

    # -- operators ---------------------------------------------------------------------------

    async def oldest_pending(self) -> datetime | None:
        async with self.database.connection() as db:
            oldest = await db.fetchval(sql.OLDEST_PENDING)
        return None if oldest is None else order_id_time(oldest)

    async def transition_matching(
        self,
        event: Event,
        source: OrderStatus,
        where: OrderFilter,
        at: datetime,
        reason: str | None,
        *,
        limit: int,
        after: str | None = None,
        dry_run: bool = False,
    ) -> tuple[list[str], str | None]:
        target = next_status(source, event)
        async with self.database.connection(changing=not dry_run) as db:
            rows = await db.fetch(
                sql.TRANSITION_MATCHING_DRY if dry_run else sql.TRANSITION_MATCHING,
                source.value,
                "" if where.start is None else order_id_floor(where.start),
                sql.ABOVE_ALL_IDS if where.end is None else order_id_floor(where.end),
                after or "",
                limit,
                where.reason_contains,
                target.value,
                entry(target, at, reason),
                _MAX_WALK,
                at,
                EVENT_TYPE[event].value,
                reason,
                event is Event.CANCEL,
                where.customer,
            )
        moved = [row["id"] for row in rows if row["id"] is not None]
        resume = next((row["walked_to"] for row in rows if row["id"] is None), None)
        return moved, resume

    # -- history and instances --------------------------------------------------------------

    async def order_minutes(self, since: datetime) -> list[MinuteCounts]:
        return await self._history.order_minutes(since)

    async def prune_minutes(self, before: datetime) -> int:
        return await self._history.prune_minutes(before)

    async def heartbeat(self, beat: InstanceBeat) -> None:
        await self._history.heartbeat(beat)

    async def stop_instance(self, name: str, at: datetime) -> None:
        await self._history.stop_instance(name, at)

    async def list_instances(self, at: datetime) -> list[Instance]:
        return await self._history.list_instances(at)

    async def prune_instances(self, before: datetime) -> int:
        return await self._history.prune_instances(before)

    # -- idempotency keys --------------------------------------------------------------------

    async def find_idempotency(self, key: str) -> IdempotencyRecord | None:
        async with self.database.connection() as db:
            row = await db.fetchrow(sql.FIND_IDEMPOTENCY, key)
        return None if row is None else IdempotencyRecord(*row)

    async def prune_idempotency(self, created_before: datetime) -> int:
        pruned = 0
        while True:  # in batches: never one long statement holding many row locks
            async with self.database.connection(changing=True) as db:
                status = await db.execute(sql.PRUNE_IDEMPOTENCY, created_before, 10_000)
            count = int(status.split()[-1])
            pruned += count
            if count < 10_000:
                return pruned

    # -- the event log -----------------------------------------------------------------------

    async def read_events(self, after: int, limit: int) -> list[OrderEvent]:
        return await self._events.read(after, limit)

    async def last_event_seq(self) -> int:
        return await self._events.last_seq()

    async def prune_events(self, before: datetime, keep: int, limit: int = 10_000) -> int:
        return await self._events.prune(before, keep, limit)

    async def sequence_events(self) -> int:
        return await self._events.number()

    def watch_events(self, on_events: Callable[[], None]) -> None:
        self._events.watch(on_events)

    async def count_by_status(self) -> dict[OrderStatus, int]:
        return await self._counts.by_status()

    async def stats(self, top: int = 20) -> Stats:
        return await self._counts.stats(top)

    # -- notifications -----------------------------------------------------------------------

    async def subscribe(
        self, on_ready: Callable[[], object], on_cancel: Callable[[str], object]
    ) -> None:
        self._listener = Listener(
            self._dsn,
            self.server_settings,
            {
                sql.READY_CHANNEL: lambda _: on_ready(),
                sql.CANCEL_CHANNEL: on_cancel,
                sql.EVENTS_CHANNEL: lambda _: self._events.numbered(),
            },
            on_reconnect=on_ready,
            outage=self.database.outage,
            check_s=self._poll_s,
        )
        await self._listener.listen()

    async def close(self) -> None:
        await self._events.close()
        if self._listener is not None:
            await self._listener.close()
        await self.database.close()
