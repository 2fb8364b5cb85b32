"""Settings: one value per `orderflow serve` flag, each also read from ORDERFLOW_<FLAG>.

Read by a function, never at import. Durations are in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from orderflow.errors import SettingError

LogLevel = Literal["debug", "info", "warning", "error"]
ENV_PREFIX = "ORDERFLOW_"

_Seconds = Annotated[float, msgspec.Meta(gt=0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 64
    shipper: str = "simulated"
    shipper_secret: str | None = None
    ship_delay: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    ship_jitter: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    ship_failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    process_timeout: _Seconds = 30.0
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    retry_backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    poll_interval: _Seconds = 1.0
    heartbeat_interval: _Seconds = 2.0
    lease_timeout: _Seconds = 15.0
    auto_process: bool = False
    snapshot: str | None = None
    snapshot_recover: bool = False
    database_url: str = "memory://"
    migrate: bool = True
    idempotency_ttl: Annotated[float, msgspec.Meta(ge=1)] = 86_400.0
    event_retention: Annotated[float, msgspec.Meta(ge=1)] = 259_200.0
    event_retention_count: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    sse_keep_alive: _Seconds = 15.0
    sse_stream_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 4 << 20
    webhook: str | None = None  # comma-separated URLs subscribed at start
    webhook_secret: str | None = None
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_timeout: _Seconds = 10.0
    webhook_allow_private: bool = False  # webhooks may go to private and loopback addresses
    http_idle_timeout: Annotated[float, msgspec.Meta(ge=1)] = 30.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    allowed_hosts: str | None = None
    allowed_origins: str = ""
    auth_tokens: str | None = None
    insecure_no_auth: bool = False
    log_level: LogLevel = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False


DEFAULTS = Settings()

_BOUNDS = (
    (re.compile(r"Expected `\w+` >= (\S+)"), "must be at least {}"),
    (re.compile(r"Expected `\w+` > (\S+)"), "must be more than {}"),
    (re.compile(r"Expected `\w+` <= (\S+)"), "must be at most {}"),
    (re.compile(r"Expected `\w+` < (\S+)"), "must be less than {}"),
)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_settings(environ: Mapping[str, str], **overrides: object) -> Settings:
    """Settings from ORDERFLOW_* variables in `environ`, then `overrides` (None means unset).

    Raises:
        SettingError: a value is malformed or out of range; the message names the flag.
    """
    values: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        name = where.rstrip("`")
        for pattern, words in _BOUNDS:
            bound = pattern.match(message)
            if bound:
                message = words.format(bound.group(1))
                break
        raise SettingError(flag_of(name) if name else "settings", message) from None
    if settings.lease_timeout < 3 * settings.heartbeat_interval - 1e-9:  # 0.6 vs 3 x 0.2
        raise SettingError("--lease-timeout", "must be at least 3 heartbeat intervals")
    return settings


def listed(value: str | None) -> list[str]:
    """The items of a comma-separated setting."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]
