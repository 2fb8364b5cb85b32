"""How PostgreSQL rows become orders and orders become statement arguments, and how the
driver's errors become ours: StoreUnavailable when the statement cannot have run, OutcomeUnknown
when the connection broke while a change was in flight, StoreRefusedData when the server refused
a value (a data exception, or a constraint other than a unique one): not an outage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from orderflow.domain import EventType, HistoryEntry, Item, Order, OrderStatus
from orderflow.errors import (
    OrderConflict,
    OrderflowError,
    OutcomeUnknown,
    StoreRefusedData,
    StoreUnavailable,
)
from orderflow.metrics import METRICS

encode = msgspec.json.Encoder().encode
_decode_items = msgspec.json.Decoder(tuple[Item, ...]).decode
_decode_history = msgspec.json.Decoder(tuple[HistoryEntry, ...]).decode
decode_object = msgspec.json.Decoder(dict[str, Any]).decode


def entry(status: OrderStatus, at: datetime, reason: str | None = None) -> str:
    return encode([HistoryEntry(status, at, reason)]).decode()


def timestamp(at: datetime) -> str:
    """`at` as a history entry writes it."""
    return encode(at)[1:-1].decode()


def json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else encode(value).decode()


# A column's text to its enum member: a dict lookup, several times cheaper than calling the
# enum, and every row read pays it.
STATUS: dict[str, OrderStatus] = {status.value: status for status in OrderStatus}
EVENT_TYPE: dict[str, EventType] = {type_.value: type_ for type_ in EventType}


def to_order(row: Any) -> Order:
    history = _decode_history(row["history"])
    shipment = row["shipment"]
    return Order(
        row["id"],
        row["customer"],
        _decode_items(row["items"]),
        row["created_at"],
        STATUS[row["status"]],
        history[-1].at,
        history,
        None if shipment is None else decode_object(shipment),
    )


# What the driver raises when the server refused the statement: it did not run (or was
# rolled back). A broken connection (the server's FATAL shutdown messages included: they can
# arrive after a commit) leaves the outcome of a change unknown.
CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# What the server refuses for the values it was sent (SQLSTATE classes 22 and 23): the same
# statement fails the same way however often it is tried.
DATA_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


@contextlib.contextmanager
def translated(*, changing: bool = False) -> Iterator[None]:
    """Driver and network errors become ours; see the module docstring."""
    try:
        yield
    except OrderflowError:
        raise
    except asyncpg.UniqueViolationError as exc:
        raise OrderConflict("an order with that id exists") from exc
    except CONNECTION_LOST as exc:
        METRICS.store_errors["outcome_unknown" if changing else "unavailable"] += 1
        if changing:
            raise OutcomeUnknown(
                f"the database connection was lost during a change: {type(exc).__name__}"
            ) from exc
        raise StoreUnavailable(f"the database is unavailable: {type(exc).__name__}") from exc
    except DATA_REFUSED as exc:
        METRICS.store_errors["refused_data"] += 1
        raise StoreRefusedData(
            f"the database refused a value: {type(exc).__name__}: {exc}"
        ) from exc
    except asyncpg.PostgresError as exc:
        METRICS.store_errors["unavailable"] += 1
        raise StoreUnavailable(f"the database refused: {type(exc).__name__}") from exc
