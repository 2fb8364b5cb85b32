"""Shipper: how an order leaves the building; SimulatedShipper stands in for a carrier."""

from __future__ import annotations

import asyncio
import random
from typing import Protocol

from orderflow.domain import Order


class ShippingError(Exception):
    """The carrier refused or lost the shipment; the order becomes failed with this as reason."""


class Shipper(Protocol):
    async def ship(self, order: Order) -> None:
        """Ship `order`; return when it has shipped. Raise to fail it. May be cancelled."""


class SimulatedShipper:
    """Waits `delay_s` plus a uniform random `jitter_s`, then fails a `failure_rate` fraction."""

    def __init__(
        self,
        delay_s: float = 1.0,
        jitter_s: float = 0.0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if delay_s < 0 or jitter_s < 0 or not 0.0 <= failure_rate <= 1.0:
            raise ValueError("delay and jitter must be >= 0, failure_rate within [0, 1]")
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.failure_rate = failure_rate
        self._rng = rng or random.Random()

    async def ship(self, order: Order) -> None:
        delay_s = self.delay_s + (self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0)
        # Always await, even for 0 s: a worker must yield to the loop between orders.
        await asyncio.sleep(delay_s)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            raise ShippingError("simulated carrier failure")
