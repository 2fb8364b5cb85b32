"""The reference apps of the HTTP benchmark, served by the same embedded granian with the same
settings as `orderflow serve`: `python -m benchmarks.nullapp PORT asgi|rsgi|floor`.

- asgi, rsgi: the null apps: read the request body and answer a constant. The ceiling of this
  stack on one core.
- floor: the least a `POST /orders` can do in Python (RSGI): decode the body with msgspec (no
  name rules), make an id and a timestamp, keep the order's JSON in a dict, add its id to a
  time index and a pending index, append an event, answer 201 with its id and Location. No
  routing, checks, metrics, logging or layers: how close orderflow's POST comes to it is
  what its own structure costs.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from orderflow.domain import Item
from orderflow.store.memory_table import SortedIds

_BODY = b'{"id":"order_0000000000000000000000000","status":"pending"}'
_ASGI_HEADERS = [(b"content-type", b"application/json")]
_RSGI_HEADERS = [("content-type", "application/json")]


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _ASGI_HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


class _Rsgi:
    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        await protocol()
        protocol.response_bytes(200, _RSGI_HEADERS, _BODY)


class _Create(msgspec.Struct, frozen=True, gc=False):
    customer: str
    items: tuple[Item, ...]


class _Head(msgspec.Struct, gc=False):
    id: str
    customer: str
    items: tuple[Item, ...]
    timestamp: datetime


class _Ref(msgspec.Struct, gc=False):
    id: str
    status: str


class Floor:
    """The floor of a POST /orders (see the module docstring)."""

    def __init__(self) -> None:
        self.decode = msgspec.json.Decoder(_Create).decode
        self.encode = msgspec.json.Encoder().encode
        self.rows: dict[str, bytes] = {}
        self.by_time, self.pending = SortedIds(), SortedIds()
        self.events: list[tuple[str, str, datetime]] = []
        self.rng = random.Random()

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        create = self.decode(await protocol())
        at = datetime.now(UTC)
        micros = time.time_ns() // 1000
        order_id = "order_" + ((micros << 64) | self.rng.getrandbits(64)).to_bytes(15).hex()
        self.rows[order_id] = self.encode(_Head(order_id, create.customer, create.items, at))
        self.by_time.add(order_id)
        self.pending.add(order_id)
        self.events.append(("order.submitted", order_id, at))
        headers = [("content-type", "application/json"), ("location", "/orders/" + order_id)]
        protocol.response_bytes(201, headers, self.encode(_Ref(order_id, "pending")))


rsgi = _Rsgi()


def main(port: int, interface: str) -> None:
    from orderflow.server import bind, run, serve_granian, settle_gc

    sock = bind("127.0.0.1", port)
    sock.listen(4096)
    app = {"asgi": asgi, "rsgi": rsgi, "floor": Floor()}[interface]
    settle_gc()  # the collector tuned as `orderflow serve` tunes it
    run(serve_granian(app, sock, interface="asgi" if interface == "asgi" else "rsgi"))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
