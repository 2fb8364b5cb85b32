"""The null apps: read the request body and answer a constant, over ASGI or RSGI. Served by the
same embedded granian with the same settings as `orderflow serve`, they are the ceiling of this
stack on one core: `python -m benchmarks.nullapp PORT asgi|rsgi`."""

from __future__ import annotations

import sys
from typing import Any

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


rsgi = _Rsgi()


def main(port: int, interface: str) -> None:
    from orderflow.server import bind, run, serve_granian

    sock = bind("127.0.0.1", port)
    sock.listen(4096)
    app = rsgi if interface == "rsgi" else asgi
    run(serve_granian(app, sock, interface=interface))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
