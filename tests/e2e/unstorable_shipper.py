"""A shipper for the hostile-value tests (`--shipper python:tests.e2e.unstorable_shipper:ship`)
whose words and results hold what PostgreSQL cannot store, chosen by the order's customer:
"fail" fails for good with a NUL, a lone surrogate and a line break in its message; "ship"
returns a result with a NUL in a value and a key; "retry" fails its first attempt with a NUL,
then ships."""

from __future__ import annotations

from typing import Any

from orderflow.shipping import PermanentFailure

FAILURE = "a\x00b\ud800c\nd"
RESULT = {"x": "a\x00b", "k\x00": ["\x00"]}


async def ship(order: dict[str, Any], context: Any) -> dict[str, Any] | None:
    customer = order["customer"]
    if customer == "fail":
        raise PermanentFailure(FAILURE)
    if customer == "retry" and context.attempt == 1:
        raise RuntimeError("carrier said \x00")
    return RESULT
