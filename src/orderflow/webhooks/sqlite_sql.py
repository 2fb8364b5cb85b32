"""Every statement SqliteWebhookStore runs, as named data (schema: migrations_sqlite/0002).
Times are microseconds since 1970; leases and due times are on the service's clock; a
holder's writes name its claim (owner, token)."""

from __future__ import annotations

COLUMNS = (
    "id, url, types, secret, ordered, created_at, cursor, disabled_at, disabled_reason, retry_at"
)

INSERT = (
    "INSERT INTO webhooks (id, url, types, secret, ordered, created_at, cursor)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
FIND = f"SELECT {COLUMNS} FROM webhooks WHERE id = ?"
FIND_BY_URL = f"SELECT {COLUMNS} FROM webhooks WHERE url = ? ORDER BY created_at, id LIMIT 1"
LIST = f"SELECT {COLUMNS} FROM webhooks ORDER BY created_at, id"
ANY = "SELECT EXISTS (SELECT 1 FROM webhooks)"
DELETE = "DELETE FROM webhooks WHERE id = ?"
FORGET_RETRIES = "DELETE FROM webhook_retries WHERE subscription_id = ?"
FORGET_DELIVERIES = "DELETE FROM webhook_deliveries WHERE subscription_id = ?"
# A replay: ? the new cursor (NULL: keep it); the token moves on, so the current claim's
# writes are refused.
REPLAY = (
    "UPDATE webhooks SET cursor = coalesce(?, cursor), retry_at = NULL, disabled_at = NULL,"
    " disabled_reason = NULL, token = token + 1 WHERE id = ?"
)
# One due subscription (? now, twice, ? the newest event's seq): the least recently held first
# (never held, NULL, first of all).
DUE = (
    "SELECT id FROM webhooks"
    " WHERE disabled_at IS NULL AND (owner IS NULL OR lease_expires_at < ?)"
    "  AND (retry_at <= ? OR (cursor < ? AND (NOT ordered OR retry_at IS NULL)))"
    " ORDER BY lease_expires_at, id LIMIT 1"
)
TAKE = "UPDATE webhooks SET owner = ?, token = token + 1, lease_expires_at = ? WHERE id = ?"
TOKEN = "SELECT token FROM webhooks WHERE id = ?"
DUE_RETRIES = (
    "SELECT seq, attempt FROM webhook_retries WHERE subscription_id = ? AND due_at <= ?"
    " ORDER BY seq LIMIT ?"
)
HELD = "SELECT 1 FROM webhooks WHERE id = ? AND owner = ? AND token = ?"
KEEP_RETRY = (
    "INSERT INTO webhook_retries (subscription_id, seq, attempt, due_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (subscription_id, seq) DO UPDATE SET attempt = excluded.attempt,"
    " due_at = excluded.due_at"
)
FORGET_RETRY = "DELETE FROM webhook_retries WHERE subscription_id = ? AND seq = ?"
RETRY_AT = (
    "UPDATE webhooks SET retry_at = (SELECT min(due_at) FROM webhook_retries"
    " WHERE subscription_id = ?) WHERE id = ?"
)
SETTLE = "UPDATE webhooks SET cursor = ?, lease_expires_at = ? WHERE id = ?"
DISABLE = "UPDATE webhooks SET disabled_at = ?, disabled_reason = ? WHERE id = ?"
LOG_DELIVERY = (
    "INSERT INTO webhook_deliveries (subscription_id, seq, webhook_id, attempt, status_code,"
    " latency_ms, error, outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Keep the newest ? of a subscription's log.
TRIM_DELIVERIES = (
    "DELETE FROM webhook_deliveries WHERE subscription_id = ? AND id <= (SELECT id FROM"
    " webhook_deliveries WHERE subscription_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
# End owner ?'s hold; the cursor becomes ? only under its token ?.
RELEASE = (
    "UPDATE webhooks SET owner = NULL, lease_expires_at = ?,"
    " cursor = CASE WHEN token = ? THEN ? ELSE cursor END WHERE id = ? AND owner = ?"
)
DELIVERIES = (
    "SELECT seq, webhook_id, attempt, status_code, latency_ms, error, outcome, at"
    " FROM webhook_deliveries WHERE subscription_id = ? ORDER BY id DESC LIMIT ?"
)
EXISTS = "SELECT EXISTS (SELECT 1 FROM webhooks WHERE id = ?)"
