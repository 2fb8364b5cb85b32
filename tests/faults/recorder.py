"""A shipper for the fault tests (`--shipper python:tests.faults.recorder:ship`): takes
RECORDER_DELAY seconds, then appends the order id to RECORDER_FILE, so a test counts how many
times each order really reached the carrier, across processes and crashes."""

from __future__ import annotations

import asyncio
import os
from typing import Any


async def ship(order: dict[str, Any], context: Any) -> dict[str, Any]:
    await asyncio.sleep(float(os.environ.get("RECORDER_DELAY", "0.05")))
    # One short write with O_APPEND: lines from many processes never interleave.
    fd = os.open(os.environ["RECORDER_FILE"], os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{order['id']}\n".encode())
    finally:
        os.close(fd)
    return {"carrier": "recorder", "pid": os.getpid()}
