"""Snapshots: the whole store as JSON Lines (one order per line), so a planned restart of the
in-memory service loses nothing. Written atomically: a temporary file, fsync, then rename."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from orderflow.clock import Clock
from orderflow.domain import (
    Event,
    Order,
    OrderQuery,
    OrderStatus,
    advance,
    id_matches_timestamp,
    is_order_id,
)
from orderflow.store.base import OrderStore

log = logging.getLogger("orderflow.snapshot")

_PAGE = 10_000
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Order)


def check_snapshot_path(path: Path) -> None:
    """Raise ValueError unless a snapshot can be written at `path` (checked at start: at
    shutdown it would be too late, and every order in memory would be lost)."""
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{path} is a directory")
    if not folder.is_dir():
        raise ValueError(f"the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"the folder {folder} is not writable")


async def save_snapshot(store: OrderStore, path: Path) -> int:
    """Write every order in `store` to `path`, replacing it atomically; returns the count."""
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with tmp.open("wb") as out:
        cursor = None
        while True:
            page = await store.list_orders(OrderQuery(limit=_PAGE, cursor=cursor))
            out.write(_encoder.encode_lines(page.orders))
            count += len(page.orders)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    log.info("snapshot of %d orders written to %s", count, path)
    return count


async def load_snapshot(store: OrderStore, path: Path, clock: Clock) -> int:
    """Add every order in the snapshot at `path` (if it exists) to `store`; returns the count.
    Raises ValueError if the file is damaged (it is left as it is).

    An order still processing in the file (the process did not stop cleanly) goes back to
    pending, so it ships on the next trigger instead of staying stuck.
    """
    try:
        data = path.read_bytes()  # noqa: ASYNC240 - once, at startup, before serving
    except FileNotFoundError:
        return 0
    try:
        orders = _decoder.decode_lines(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"the snapshot {path} is damaged ({exc}); move it away to start") from None
    now = clock.now()
    for order in orders:
        if not (is_order_id(order.id) and id_matches_timestamp(order.id, order.timestamp)):
            raise ValueError(f"the snapshot {path} holds an order whose id is not its time")
        if order.status is OrderStatus.PROCESSING:
            order = advance(order, Event.RELEASE, now, "restart: was processing in the snapshot")
        await store.add(order)
    log.info("snapshot of %d orders loaded from %s", len(orders), path)
    return len(orders)
