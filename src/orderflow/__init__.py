"""orderflow: take customer orders over HTTP and ship them concurrently.

What a plug-in author writes against (a ``--shipper python:module:function``): the context its
function receives, and the two failures it may raise. Everything else is the service's own.
`ShipContext` is loaded when first asked for, so that importing a part of orderflow (the pure
domain, say) loads no more than that part needs.
"""

from typing import TYPE_CHECKING, Any

from orderflow.errors import PermanentFailure, RetryableFailure
from orderflow.version import __version__

if TYPE_CHECKING:
    from orderflow.shipping import ShipContext

__all__ = ["PermanentFailure", "RetryableFailure", "ShipContext", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "ShipContext":
        from orderflow.shipping import ShipContext

        return ShipContext
    raise AttributeError(f"module 'orderflow' has no attribute {name!r}")
