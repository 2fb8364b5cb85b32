"""The null ASGI app: reads the request body and answers a constant. Served by the same server
with the same settings as orderflow, it is the ceiling for this stack on one core."""

from __future__ import annotations

from typing import Any

_BODY = b'{"id":"order_0000000000000000000000000","status":"pending"}'
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


if __name__ == "__main__":
    import sys

    from orderflow.cli import run_granian

    run_granian("benchmarks.nullapp:app", "127.0.0.1", int(sys.argv[1]), "warning", factory=False)
