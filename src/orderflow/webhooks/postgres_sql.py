"""Every statement PostgresWebhookStore runs, as named data. Leases and due times are on the
database's clock (``now()``); a holder's writes name its claim (owner, token)."""

from __future__ import annotations

COLUMNS = (
    "id, url, types, secret, ordered, created_at, cursor, disabled_at, disabled_reason, retry_at"
)
W_COLUMNS = ", ".join("w." + column.strip() for column in COLUMNS.split(","))
ENSURE_LOCK = 0x776562686F6F6B  # advisory lock: one `ensure` at a time

# $1..$7 the subscription (retry_at and the rest start empty).
INSERT = (
    "INSERT INTO webhooks (id, url, types, secret, ordered, created_at, cursor)"
    " VALUES ($1, $2, $3::text[], $4, $5, $6, $7)"
)
FIND = f"SELECT {COLUMNS} FROM webhooks WHERE id = $1"
FIND_BY_URL = f"SELECT {COLUMNS} FROM webhooks WHERE url = $1 ORDER BY created_at, id LIMIT 1"
LIST = f"SELECT {COLUMNS} FROM webhooks ORDER BY created_at, id"
ANY = "SELECT EXISTS (SELECT FROM webhooks)"
DELETE = "DELETE FROM webhooks WHERE id = $1 RETURNING id"
# A replay, in a transaction: lock the row, forget the retries, then $2 the new cursor (NULL:
# keep it); the token moves on, so the current claim's writes are refused.
LOCK = "SELECT id FROM webhooks WHERE id = $1 FOR UPDATE"
FORGET_RETRIES = "DELETE FROM webhook_retries WHERE subscription_id = $1"
REPLAY = (
    "UPDATE webhooks SET cursor = coalesce($2, cursor), retry_at = NULL, disabled_at = NULL,"
    f" disabled_reason = NULL, token = token + 1 WHERE id = $1 RETURNING {COLUMNS}"
)
# Claim one due subscription for owner $1: $2 the newest event's seq, $3 the lease in seconds.
# The least recently held first (never held: first of all). Answers its due retries too.
CLAIM = (
    "WITH picked AS (SELECT id FROM webhooks"
    "  WHERE disabled_at IS NULL AND (owner IS NULL OR lease_expires_at < now())"
    "   AND (retry_at <= now() OR (cursor < $2 AND (NOT ordered OR retry_at IS NULL)))"
    "  ORDER BY lease_expires_at NULLS FIRST, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " UPDATE webhooks w SET owner = $1, token = w.token + 1,"
    "  lease_expires_at = now() + make_interval(secs => $3)"
    f" FROM picked WHERE w.id = picked.id RETURNING {W_COLUMNS}, w.token,"
    "  ARRAY(SELECT seq FROM webhook_retries r WHERE r.subscription_id = w.id"
    "   AND r.due_at <= now() ORDER BY seq LIMIT $4) AS retry_seqs,"
    "  ARRAY(SELECT attempt FROM webhook_retries r WHERE r.subscription_id = w.id"
    "   AND r.due_at <= now() ORDER BY seq LIMIT $4) AS retry_attempts"
)
# A holder's write, checked against its claim ($1 id, $2 owner, $3 token), extending the lease
# to $4 seconds: $5 the cursor; $6 the event whose retry is kept ($7 attempts, due in $8
# seconds) or forgotten ($7 NULL), or NULL; $9 disable, saying why (or NULL); $10..$17 a
# delivery record (or $10 NULL), the log trimmed to the newest 100. retry_at is recomputed
# from the other retries and the one kept: a statement does not see its own CTEs' changes.
SETTLE = (
    "WITH held AS (SELECT id FROM webhooks WHERE id = $1 AND owner = $2 AND token = $3"
    "  FOR UPDATE),"
    " kept AS (INSERT INTO webhook_retries (subscription_id, seq, attempt, due_at)"
    "  SELECT id, $6, $7, now() + make_interval(secs => $8) FROM held"
    "  WHERE $6::bigint IS NOT NULL AND $7::int IS NOT NULL"
    "  ON CONFLICT (subscription_id, seq)"
    "  DO UPDATE SET attempt = EXCLUDED.attempt, due_at = EXCLUDED.due_at RETURNING due_at),"
    " forgotten AS (DELETE FROM webhook_retries r USING held"
    "  WHERE r.subscription_id = held.id AND r.seq = $6 AND $7::int IS NULL),"
    " logged AS (INSERT INTO webhook_deliveries (subscription_id, seq, webhook_id, attempt,"
    "   status_code, latency_ms, error, outcome, at)"
    "  SELECT id, $10, $11, $12, $13, $14, $15, $16, $17 FROM held WHERE $10::bigint IS NOT NULL),"
    " trimmed AS (DELETE FROM webhook_deliveries d USING held"
    "  WHERE d.subscription_id = held.id AND $10::bigint IS NOT NULL"
    "   AND d.id <= (SELECT id FROM webhook_deliveries WHERE subscription_id = $1"
    "    ORDER BY id DESC OFFSET 99 LIMIT 1)),"
    " upd AS (UPDATE webhooks w SET cursor = $5,"
    "   retry_at = CASE WHEN $6::bigint IS NULL THEN w.retry_at ELSE least("
    "    (SELECT min(due_at) FROM webhook_retries r WHERE r.subscription_id = w.id"
    "     AND r.seq <> $6), (SELECT due_at FROM kept)) END,"
    "   disabled_at = CASE WHEN $9::text IS NULL THEN w.disabled_at ELSE now() END,"
    "   disabled_reason = coalesce($9::text, w.disabled_reason),"
    "   lease_expires_at = now() + make_interval(secs => $4)"
    "  FROM held WHERE w.id = held.id RETURNING w.id)"
    " SELECT count(*) FROM upd"
)
# End owner $2's hold of $1; the cursor becomes $4 only under its token $3.
RELEASE = (
    "UPDATE webhooks SET owner = NULL, lease_expires_at = now(),"
    " cursor = CASE WHEN token = $3 THEN $4 ELSE cursor END WHERE id = $1 AND owner = $2"
)
DELIVERIES = (
    "SELECT seq, webhook_id, attempt, status_code, latency_ms, error, outcome, at"
    " FROM webhook_deliveries WHERE subscription_id = $1 ORDER BY id DESC LIMIT 100"
)
EXISTS = "SELECT EXISTS (SELECT FROM webhooks WHERE id = $1)"
