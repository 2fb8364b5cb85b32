"""A shipper for the dashboard's browser tests (``--shipper python:tests.browser.shipper:ship``):
an order whose customer starts with "Refuse" fails for good; one whose customer starts with
"Once" fails its first shipment and ships when retried; any other ships after 0.3 s with a
tracking number, so the page has a failure reason and a shipment result to show."""

from __future__ import annotations

import asyncio
from typing import Any

from orderflow.shipping import PermanentFailure, ShipContext

REFUSED = "carrier refused: unknown address"
_refused_once: set[str] = set()  # orders of "Once …" customers refused already (this process)


async def ship(order: dict[str, Any], context: ShipContext) -> dict[str, Any]:
    await asyncio.sleep(0.3)
    if order["customer"].startswith("Refuse"):
        raise PermanentFailure(REFUSED)
    if order["customer"].startswith("Once") and order["id"] not in _refused_once:
        _refused_once.add(order["id"])
        raise PermanentFailure(REFUSED)
    return {"carrier": "Test Post", "tracking": f"TP-{order['id'][-8:]}"}
