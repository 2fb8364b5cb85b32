"""An example shipper to copy: ``orderflow serve --shipper python:examples.fulfilment:ship``.

`ship` gets the order as the HTTP API shows it (a dict) and the attempt's `ShipContext`; it
returns the result stored on the order (a JSON object of at most 4 KiB) or None. Raising
`PermanentFailure` fails the order at once; any other exception is retried (``--max-attempts``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from orderflow import PermanentFailure, ShipContext

UNSHIPPABLE = "Forbidden Item"  # never ships: fails the order at once
FLAKY = "Flaky Item"  # the courier is busy on the first attempt: shows a retry


async def ship(order: dict[str, Any], context: ShipContext) -> dict[str, Any] | None:
    names = {item["name"] for item in order["items"]}
    if UNSHIPPABLE in names:
        raise PermanentFailure(f"{UNSHIPPABLE!r} cannot be shipped")
    if FLAKY in names and context.attempt == 1:
        context.log.warning("courier busy on attempt %d, will retry", context.attempt)
        raise RuntimeError("courier busy")
    await asyncio.sleep(0.01)  # stands in for booking a courier over its API
    # Derived from the order id, so a retried booking gets the same tracking number.
    tracking = "EX" + order["id"].removeprefix("order_")[-12:].upper()
    context.log.info("courier booked, tracking %s", tracking)
    return {"carrier": "example", "tracking": tracking}
