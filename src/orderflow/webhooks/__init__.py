"""Signed webhooks: subscriptions to the event log, delivered per the Standard Webhooks
specification. `open_webhook_store(order_store)` picks the backend that goes with the order
store; `delivery.Deliverer` is the engine; `routes.WEBHOOK_ROUTES` the API."""

from __future__ import annotations

from orderflow.store.base import OrderStore
from orderflow.store.memory import InMemoryOrderStore
from orderflow.webhooks.store import InMemoryWebhookStore, WebhookStore

__all__ = ["InMemoryWebhookStore", "WebhookStore", "open_webhook_store"]


def open_webhook_store(orders: OrderStore) -> WebhookStore:
    """The webhook store that goes with `orders`: the same PostgreSQL database (and pool) for
    a PostgresOrderStore, the same file for a SqliteOrderStore, else one in memory
    (subscriptions last as long as the process)."""
    if not isinstance(orders, InMemoryOrderStore):
        from orderflow.store.postgres import PostgresOrderStore  # only then import the driver

        if isinstance(orders, PostgresOrderStore):
            from orderflow.webhooks.postgres import PostgresWebhookStore

            return PostgresWebhookStore(orders.database)
        from orderflow.store.sqlite import SqliteOrderStore

        if isinstance(orders, SqliteOrderStore):
            from orderflow.webhooks.sqlite import SqliteWebhookStore

            return SqliteWebhookStore(orders.database)
    return InMemoryWebhookStore()
