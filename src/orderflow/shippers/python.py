"""`PythonShipper`: ships an order by awaiting a user's async function, named on the command line
as ``--shipper python:package.module:function`` and imported once, at start, by
`load_python_shipper`.

The function is called as ``await function(order, context)``: `order` is a dict, the order
exactly as the HTTP API shows it (timestamps as RFC 3339 strings), and `context` the attempt's
`ShipContext`. It keeps the contract in `orderflow.shipping`: it returns None or a dict, raises
`PermanentFailure` to fail the order, and anything else it raises is retried.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from orderflow.domain import Parcel
from orderflow.shipping import MAX_RESULT_BYTES, PermanentFailure, ShipContext

ShipFunction = Callable[[dict[str, Any], ShipContext], Awaitable[dict[str, Any] | None]]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class PythonShipper:
    """Awaits `function` once per attempt; `name` (``module:function``) names it in failures."""

    def __init__(self, function: ShipFunction, name: str) -> None:
        self._function = function
        self.name = name

    async def ship(self, parcel: Parcel, context: ShipContext) -> dict[str, Any] | None:
        """The function's result, checked and copied out as plain JSON data.

        Raises:
            PermanentFailure: raised by the function, or its result is not None or a dict, is
                not JSON, or is over `MAX_RESULT_BYTES` encoded: a bug no retry would fix.
            Exception: whatever else the function raised, unchanged (the attempt is retried).
        """
        # The API's own encoding, decoded: lists, not tuples, and timestamps as strings
        # (msgspec.to_builtins is faster by 1 µs but keeps tuples).
        result = await self._function(_decode(parcel.json), context)
        if result is None:
            return None
        if not isinstance(result, dict):
            raise PermanentFailure(
                f"shipper {self.name} returned a {type(result).__name__}, not a dict or None"
            )
        try:
            encoded = _encode(result)
        except (TypeError, ValueError) as exc:
            raise PermanentFailure(
                f"shipper {self.name} returned a dict that is not JSON: {exc}"
            ) from exc
        if len(encoded) > MAX_RESULT_BYTES:
            raise PermanentFailure(
                f"shipper {self.name} returned {len(encoded)} bytes of JSON,"
                f" over the limit of {MAX_RESULT_BYTES}"
            )
        # A copy: what is stored is what the API will show, and the function cannot change it.
        stored: dict[str, Any] = _decode(encoded)
        return stored

    async def close(self) -> None:
        return None


def load_python_shipper(spec: str) -> PythonShipper:
    """The shipper for ``--shipper python:<spec>``, `spec` being ``package.module:function``
    (the function may be an attribute path: ``module:Class.method``).

    The current directory is put first on ``sys.path`` if it is not there yet, as uvicorn does,
    so that a module beside the project, such as ``examples.fulfilment``, can be named.

    Raises:
        ValueError: a one-line message in the user's terms, such as
            ``--shipper python:examples.fulfilment:ship: no module named 'examples'``, when the
            spec is malformed, the module cannot be imported, the attribute is missing or it is
            not an async function.
    """
    where = f"--shipper python:{spec}"
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ValueError(f"{where}: expected package.module:function")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise ValueError(f"{where}: no module named {missing!r}") from exc
        raise ValueError(f"{where}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:  # the module's own code failed: its error, on one line
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ValueError(f"{where}: importing {module_name} failed: {detail}") from exc
    path = module_name
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{where}: {path!r} has no attribute {part!r}")
        target = getattr(target, part)
        path = f"{path}.{part}"
    if not _is_async_callable(target):
        raise ValueError(f"{where}: {attribute} is not an async function (async def)")
    return PythonShipper(target, spec)


def _is_async_callable(target: Any) -> bool:
    # An instance with an ``async def __call__`` is an async function too.
    return inspect.iscoroutinefunction(target) or (
        callable(target) and inspect.iscoroutinefunction(type(target).__call__)
    )
