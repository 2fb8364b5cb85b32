"""Order stores: the contract (`base.OrderStore`) and its backends, in memory (`memory`), in a
SQLite file (`sqlite`) and on PostgreSQL (`postgres`); each is the only module that imports its
driver. The runtime picks one by the URL's scheme (`runtime.open_stores`)."""

from __future__ import annotations

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore

__all__ = ["InMemoryOrderStore", "OrderStore"]
