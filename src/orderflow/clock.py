"""The one source of time and id entropy (tests inject their own), and the names a running
process holds work under."""

from __future__ import annotations

import os
import random
import secrets
import socket
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC, with a microsecond that is not zero (JSON
        encoders drop a zero fraction; every timestamp we serve carries its microseconds)."""

    def entropy(self) -> int:
        """64 or more random bits for a new order id."""


class SystemClock:
    def __init__(self) -> None:
        # Seeded from os.urandom: ids from many processes must not collide; they need not be
        # unguessable, so the fast generator will do.
        self._rng = random.Random()

    def now(self) -> datetime:
        now = datetime.now(UTC)
        return now if now.microsecond else now.replace(microsecond=1)

    def entropy(self) -> int:
        return self._rng.getrandbits(64)


def new_owner_id() -> str:
    """A name to hold work under (a processor's orders, a deliverer's subscriptions), unique
    across hosts and restarts: host, pid, random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
