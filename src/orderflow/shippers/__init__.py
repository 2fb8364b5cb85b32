"""Shippers beyond the simulated one, one module each, picked by `--shipper` (`load_shipper`):

    http.py     HttpShipper: POSTs the order, signed per Standard Webhooks, to an http(s):// URL,
                through HttpClient (httpclient.py: a small HTTP/1.1 client with a keep-alive pool;
                httpconnection.py: one connection and its bounded answer)
    python.py   PythonShipper: awaits a user's async function (``python:package.module:function``)

Each is imported only when picked, so loading one shipper never imports another's dependencies.
"""

from __future__ import annotations

from orderflow.settings import Settings
from orderflow.shipping import Shipper, SimulatedShipper


def load_shipper(settings: Settings) -> Shipper:
    """The shipper `--shipper` names, configured by its flags. Raises ValueError, a message
    naming the flag at fault."""
    spec = settings.shipper
    if spec == "simulated":
        return SimulatedShipper(
            settings.ship_delay, settings.ship_jitter, settings.ship_failure_rate
        )
    try:
        if spec.startswith("python:"):
            from orderflow.shippers.python import load_python_shipper

            return load_python_shipper(spec.removeprefix("python:"))
        if spec.startswith(("http://", "https://")):
            from orderflow.shippers.http import HttpShipper

            if not settings.shipper_secret:
                raise ValueError("--shipper-secret (a whsec_ key) is needed to sign the calls")
            return HttpShipper(spec, settings.shipper_secret, timeout_s=settings.process_timeout)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith("--") else f"--shipper: {message}") from None
    raise ValueError(
        f"--shipper: {spec!r} is not simulated, python:module:function or an http(s):// URL"
    )
