"""Signed webhooks: subscriptions to the event log, delivered per the Standard Webhooks
specification. `service.WebhookService` is what the API asks of them, `delivery.Deliverer` the
engine that sends them, `routes.WEBHOOK_ROUTES` the API; their stores are `store` (the contract,
and in memory), `sqlite` and `postgres`."""
