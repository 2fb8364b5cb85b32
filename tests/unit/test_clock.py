"""The system clock: what every timestamp and id starts from."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from orderflow import clock as clock_module
from orderflow.clock import SystemClock


def test_system_clock_reads_utc_and_fresh_entropy() -> None:
    clock = SystemClock()
    now = clock.now()
    assert now.tzinfo is UTC
    assert now.microsecond != 0
    assert len({clock.entropy() for _ in range(100)}) == 100


def test_a_whole_second_is_read_with_a_microsecond_so_json_keeps_the_fraction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JSON encoders drop a zero fraction: one timestamp in a million lost its microseconds."""

    class WholeSecond(datetime):
        @classmethod
        def now(cls, tz: object = None) -> WholeSecond:  # type: ignore[override]
            return cls(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    monkeypatch.setattr(clock_module, "datetime", WholeSecond)
    assert SystemClock().now() == datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC)
    assert msgspec.json.encode(datetime(2026, 1, 1, tzinfo=UTC)) == b'"2026-01-01T00:00:00Z"'
