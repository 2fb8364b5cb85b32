"""Order stores: `open_store(url)` picks a backend by the URL's scheme."""

from __future__ import annotations

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore

__all__ = ["InMemoryOrderStore", "OrderStore", "open_store"]


async def open_store(
    url: str, *, migrate: bool = True, event_retention: int = 100_000, poll_s: float = 1.0
) -> OrderStore:
    """A ready store for `url`: ``memory://`` (the default), ``sqlite:///path.db`` or
    ``postgresql://…`` (schema migrations applied first unless `migrate` is false).
    `event_retention` bounds the event log of the in-memory store, in events; a shared store
    looks every `poll_s` for what other processes did that no notification said.

    Raises:
        ValueError: the scheme is not one we know.
        StoreUnavailable: the database cannot be reached (the message says why).
    """
    scheme = url.partition("://")[0]
    if scheme == "memory":
        return InMemoryOrderStore(event_retention=event_retention)
    if scheme in ("postgresql", "postgres"):
        from orderflow.store.postgres import PostgresOrderStore  # only then import the driver

        return await PostgresOrderStore.connect(url, apply_migrations=migrate, poll_s=poll_s)
    if scheme == "sqlite":
        from orderflow.store.sqlite import SqliteOrderStore  # only then import the driver

        return await SqliteOrderStore.open(url, apply_migrations=migrate)
    raise ValueError(
        f"unsupported scheme {scheme!r} (use memory://, sqlite:///path.db or postgresql://)"
    )
