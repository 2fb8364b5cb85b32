"""Order stores: `open_store(url)` picks a backend by the URL's scheme."""

from __future__ import annotations

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore

__all__ = ["InMemoryOrderStore", "OrderStore", "open_store"]


async def open_store(url: str, *, migrate: bool = True) -> OrderStore:
    """A ready store for `url`: ``memory://`` (the default) or ``postgresql://…`` (schema
    migrations applied first unless `migrate` is false).

    Raises:
        ValueError: the scheme is not one we know.
        StoreUnavailable: the database cannot be reached.
    """
    scheme = url.partition("://")[0]
    if scheme == "memory":
        return InMemoryOrderStore()
    if scheme in ("postgresql", "postgres"):
        from orderflow.store.postgres import PostgresOrderStore  # only then import the driver

        return await PostgresOrderStore.connect(url, apply_migrations=migrate)
    raise ValueError(f"unsupported store URL scheme {scheme!r} (use memory:// or postgresql://)")
