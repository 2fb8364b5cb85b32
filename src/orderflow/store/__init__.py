"""Order stores: `open_store(url)` picks a backend by the URL's scheme."""

from __future__ import annotations

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore

__all__ = ["InMemoryOrderStore", "OrderStore", "open_store"]


async def open_store(url: str) -> OrderStore:
    """A ready store for `url`: ``memory://`` (the default) or ``postgresql://…``.

    Raises:
        ValueError: the scheme is not one we know.
    """
    scheme = url.partition("://")[0]
    if scheme == "memory":
        return InMemoryOrderStore()
    raise ValueError(f"unsupported store URL scheme {scheme!r} (use memory:// or postgresql://)")
