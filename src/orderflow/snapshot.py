"""Snapshots: the in-memory store as a file, so a planned restart loses nothing, and a crash is
never mistaken for one.

The file is JSON Lines: a header, one ``[kind, record]`` line per order, idempotency key and
event, and a trailer with the count and SHA-256 of the lines between, so a file cut short
(even at a line boundary), emptied or edited is refused, naming the file. It is written
atomically (a temporary file, fsync, rename).

A snapshot is loaded once. At start it is moved aside to ``PATH.loaded`` (when there is none, an
empty one is put there: the mark of a running service); a clean stop writes ``PATH`` and removes
the mark. A start that finds the mark alone knows that the last run crashed: what it loaded may
have shipped since, so it refuses, unless told to recover (``--snapshot-recover``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from orderflow.domain import Order, OrderEvent
from orderflow.errors import SnapshotError
from orderflow.store.base import IdempotencyRecord, MemoryState

log = logging.getLogger("orderflow.snapshot")

FORMAT = "orderflow-snapshot"
VERSION = 2


class _Header(msgspec.Struct, frozen=True):
    format: str
    version: int
    written_at: datetime


class _Trailer(msgspec.Struct, frozen=True):
    count: int
    sha256: str
    last_event_seq: int


_KINDS: dict[str, type[Any]] = {
    "order": Order,
    "key": IdempotencyRecord,
    "event": OrderEvent,
}
_encode = msgspec.json.Encoder().encode
_decode_line = msgspec.json.Decoder(tuple[str, msgspec.Raw]).decode
_decoders = {kind: msgspec.json.Decoder(cls).decode for kind, cls in _KINDS.items()}


def check_snapshot_path(path: Path) -> None:
    """Raise SnapshotError unless a snapshot can be written at `path` (checked at start: at
    shutdown it would be too late, and every order in memory would be lost)."""
    folder = path.parent
    if path.is_dir():
        raise SnapshotError(f"{path} is a directory")
    if not folder.is_dir():
        raise SnapshotError(f"the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SnapshotError(f"the folder {folder} is not writable")


class SnapshotFile:
    """The snapshot at `path` and its mark ``path.loaded``.

    Args:
        recover: load the mark of a run that crashed (its orders may ship again).
    """

    def __init__(self, path: Path, *, recover: bool = False) -> None:
        self.path = path
        self.mark = path.with_name(path.name + ".loaded")
        self._recover = recover
        self._marked = False

    def read(self) -> MemoryState | None:
        """The state to start from (None: start empty). Raises SnapshotError."""
        check_snapshot_path(self.path)
        if self.mark.exists():
            if self.path.exists():
                # A clean stop wrote the snapshot and stopped before removing the mark.
                return self._read(self.path)
            if not self._recover:
                raise SnapshotError(
                    f"the last run did not stop cleanly: {self.mark} was loaded at its start and"
                    " never replaced, and orders it shipped since would ship again; start with"
                    " --snapshot-recover to load it anyway, or move it away to start empty"
                )
            log.warning("recovering from %s: orders shipped since it was loaded may ship again",
                        self.mark)  # fmt: skip
            return self._read(self.mark)
        return self._read(self.path) if self.path.exists() else None

    def mark_loaded(self) -> None:
        """Move the snapshot aside (or put an empty mark): from now on, only a clean stop
        (`save`) makes a snapshot that a start will load."""
        if self.path.exists():
            self.path.replace(self.mark)
        elif not self.mark.exists():
            _write(self.mark, MemoryState([], [], [], 0))
        self._marked = True

    def unmark(self) -> None:
        """Undo `mark_loaded` (the start failed after it: nothing ran)."""
        if self._marked and self.mark.exists() and not self.path.exists():
            self.mark.replace(self.path)
        self._marked = False

    def save(self, state: MemoryState) -> int:
        """Write `state` to the snapshot, atomically, and remove the mark; returns the number
        of orders written."""
        _write(self.path, state)
        self.mark.unlink(missing_ok=True)
        self._marked = False
        log.info("snapshot of %d orders written to %s", len(state.orders), self.path)
        return len(state.orders)

    def _read(self, path: Path) -> MemoryState:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"cannot read the snapshot {path}: {exc.strerror}") from None
        try:
            state = _parse(data)
        except (ValueError, msgspec.DecodeError) as exc:
            raise SnapshotError(
                f"the snapshot {path} is damaged ({exc}); move it away to start empty"
            ) from None
        log.info("snapshot of %d orders loaded from %s", len(state.orders), path)
        return state


def _write(path: Path, state: MemoryState) -> None:
    lines = [_encode(("order", order)) for order in state.orders]
    lines += [_encode(("key", record)) for record in state.idempotency]
    lines += [_encode(("event", event)) for event in state.events]
    body = b"".join(line + b"\n" for line in lines)
    header = _Header(FORMAT, VERSION, datetime.now(UTC))
    trailer = _Trailer(len(lines), hashlib.sha256(body).hexdigest(), state.last_event_seq)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        out.write(_encode(header) + b"\n")
        out.write(body)
        out.write(_encode(trailer) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def _parse(data: bytes) -> MemoryState:
    if not data.endswith(b"\n"):
        raise ValueError("it ends in the middle of a line")
    first, _, rest = data.partition(b"\n")
    header = msgspec.json.decode(first, type=_Header)
    if header.format != FORMAT or header.version != VERSION:
        raise ValueError(f"not an {FORMAT} of version {VERSION}")
    body, _, last = rest[:-1].rpartition(b"\n")
    body = body + b"\n" if body else b""
    trailer = msgspec.json.decode(last, type=_Trailer)
    if hashlib.sha256(body).hexdigest() != trailer.sha256:
        raise ValueError("its checksum does not match its content")
    state = MemoryState([], [], [], trailer.last_event_seq)
    lists: dict[str, list[Any]] = {
        "order": state.orders,
        "key": state.idempotency,
        "event": state.events,
    }
    count = 0
    for line in body.splitlines():
        kind, raw = _decode_line(line)
        if kind not in _decoders:
            raise ValueError(f"unknown record kind {kind!r}")
        lists[kind].append(_decoders[kind](raw))
        count += 1
    if count != trailer.count:
        raise ValueError(f"it holds {count} records where its trailer says {trailer.count}")
    return state
