"""Settings: ORDERFLOW_* variables, then flags; every refusal names the flag at fault."""

from __future__ import annotations

import pytest

from orderflow.cli import serve
from orderflow.settings import DEFAULTS, SettingError, Settings, flag_of, listed, load_settings


def test_settings_come_from_env_then_overrides() -> None:
    """ORDERFLOW_* variables, then flags over them; an empty variable or a None flag is unset."""
    env = {
        "ORDERFLOW_PORT": "9000",
        "ORDERFLOW_AUTO_PROCESS": "true",
        "ORDERFLOW_HOST": "",  # empty: unset
        "ORDERFLOW_CONCURRENCY": "8",
        "ORDERFLOW_SHIP_DELAY": "3",
    }
    settings = load_settings(env, ship_delay=0.25, concurrency=None)
    assert settings.port == 9000
    assert settings.auto_process is True
    assert settings.ship_delay == 0.25  # the flag wins over the variable
    assert settings.host == DEFAULTS.host
    assert settings.concurrency == 8  # None: the flag was not given
    assert settings == Settings(port=9000, auto_process=True, ship_delay=0.25, concurrency=8)


def test_no_variables_and_no_flags_give_the_defaults() -> None:
    """Nothing set: the defaults."""
    assert load_settings({}) == DEFAULTS == Settings()


def test_variables_of_other_programs_are_ignored() -> None:
    """Variables without the prefix, or naming no setting, are ignored."""
    assert load_settings({"PORT": "1", "ORDERFLOW_NOT_A_SETTING": "x"}) == DEFAULTS


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"ORDERFLOW_CONCURRENCY": "0"}, {}, "--concurrency: must be at least 1"),
        ({}, {"concurrency": 0}, "--concurrency: must be at least 1"),
        ({}, {"concurrency": 100_001}, "--concurrency: must be at most 100000"),
        ({"ORDERFLOW_PORT": "70000"}, {}, "--port: must be at most 65535"),
        ({"ORDERFLOW_SHIP_DELAY": "-1"}, {}, "--ship-delay: must be at least 0"),
        ({"ORDERFLOW_PROCESS_TIMEOUT": "0"}, {}, "--process-timeout: must be more than 0"),
        ({"ORDERFLOW_SHIP_FAILURE_RATE": "2"}, {}, "--ship-failure-rate: must be at most 1"),
        ({"ORDERFLOW_MAX_ATTEMPTS": "0"}, {}, "--max-attempts: must be at least 1"),
        ({"ORDERFLOW_PORT": "eighty"}, {}, "--port: "),
        ({"ORDERFLOW_AUTO_PROCESS": "maybe"}, {}, "--auto-process: "),
        ({"ORDERFLOW_LOG_LEVEL": "loud"}, {}, "--log-level: "),
        (
            {"ORDERFLOW_LEASE_TIMEOUT": "1", "ORDERFLOW_HEARTBEAT_INTERVAL": "1"},
            {},
            "--lease-timeout: must be at least 3 heartbeat intervals",
        ),
        ({}, {"lease_timeout": 5.9, "heartbeat_interval": 2}, "--lease-timeout: "),
    ],
)
def test_a_bad_setting_is_refused_naming_its_flag(
    env: dict[str, str], overrides: dict[str, object], message: str
) -> None:
    """SettingError messages start with the flag, as typed (`--concurrency: must be at least 1`)."""
    with pytest.raises(SettingError) as refused:
        load_settings(env, **overrides)
    assert str(refused.value).startswith(message), str(refused.value)
    assert refused.value.flag == message.partition(":")[0]
    assert isinstance(refused.value, ValueError)


def test_a_lease_of_exactly_three_heartbeats_is_enough() -> None:
    """A lease of exactly three heartbeats is accepted."""
    settings = load_settings({}, lease_timeout=6.0, heartbeat_interval=2.0)
    assert settings.lease_timeout == 6.0


def test_flags_are_named_as_typed() -> None:
    """`flag_of` turns a field name into its flag."""
    assert flag_of("lease_timeout") == "--lease-timeout"
    assert flag_of("port") == "--port"


def test_a_listed_setting_is_split_on_commas_and_trimmed() -> None:
    """`listed` splits on commas, trims, drops empty items."""
    assert listed(None) == []
    assert listed("") == []
    assert listed(" a.example , b.example,,") == ["a.example", "b.example"]


def test_every_setting_is_a_flag_of_serve() -> None:
    flags = {param.name for param in serve.params}
    assert set(Settings.__struct_fields__) <= flags
