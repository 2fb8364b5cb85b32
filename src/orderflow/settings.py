"""Settings: one value per `orderflow serve` flag, each also read from ORDERFLOW_<FLAG>.

Read by a function, never at import. Durations are in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

LogLevel = Literal["debug", "info", "warning", "error"]
ENV_PREFIX = "ORDERFLOW_"


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 64
    ship_delay: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    ship_jitter: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    ship_failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    process_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    retry_backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    heartbeat_interval: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    lease_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    auto_process: bool = False
    snapshot: str | None = None
    database_url: str = "memory://"
    migrate: bool = True
    log_level: LogLevel = "info"


DEFAULTS = Settings()


def load_settings(environ: Mapping[str, str], **overrides: object) -> Settings:
    """Settings from ORDERFLOW_* variables in `environ`, then `overrides` (None means unset).

    Raises:
        ValueError: a value is malformed or out of range; the message names it.
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
        raise ValueError(f"invalid setting: {exc}") from None
    if settings.lease_timeout < 3 * settings.heartbeat_interval:
        raise ValueError("invalid setting: lease_timeout must be at least 3 heartbeat_intervals")
    return settings


def settings_to_env(settings: Settings) -> dict[str, str]:
    """ORDERFLOW_* variables that `load_settings` turns back into `settings`."""
    env = {}
    for name in Settings.__struct_fields__:
        value = getattr(settings, name)
        if value is not None:
            env[ENV_PREFIX + name.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return env
