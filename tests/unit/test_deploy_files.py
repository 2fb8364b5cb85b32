"""What deploy/ hands an operator, read as systemd and orderflow will read it: the example
settings are real flags with valid values, the unit's stop timeout outlasts what a stop may take
under those settings, and the README's Deploy section names only flags that exist.
(`make test` also runs `systemd-analyze verify` on the unit: deploy/verify-unit.)"""

from __future__ import annotations

import re

import click

from orderflow.cli import cli
from orderflow.settings import load_settings
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"


def assignments(text: str) -> dict[str, str]:
    """The KEY=VALUE lines of a systemd unit or environment file (the last one of a key wins,
    as systemd reads them); comments and section headers left out."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def serve_variables() -> set[str]:
    serve = cli.commands["serve"]
    return {param.envvar for param in serve.params if isinstance(param.envvar, str)}


def all_flags(command: click.Command) -> set[str]:
    flags = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            flags |= all_flags(sub)
    return flags


def test_the_example_environment_file_sets_only_flags_of_serve_with_values_it_takes() -> None:
    env = assignments((DEPLOY / "orderflow.env").read_text())
    assert set(env) <= serve_variables(), set(env) - serve_variables()
    settings = load_settings(env)
    assert settings.host == "127.0.0.1"
    assert settings.database_url.startswith("postgresql://")
    assert settings.auto_process
    assert settings.max_attempts > 1
    assert settings.auth_tokens is not None
    assert settings.log_format == "json"


def test_the_units_stop_timeout_outlasts_the_longest_stop_under_the_example_settings() -> None:
    """A stop gives shipments the grace, then webhook deliveries in flight up to the grace
    again, then writes what happened: past TimeoutStopSec systemd kills the process, so it must
    leave room for all of that."""
    unit = assignments((DEPLOY / "orderflow.service").read_text())
    env = assignments((DEPLOY / "orderflow.env").read_text())
    grace = load_settings(env).shutdown_grace
    assert unit["KillSignal"] == "SIGTERM"
    assert float(unit["TimeoutStopSec"]) >= 2 * grace + 15
    assert unit["EnvironmentFile"] == "/etc/orderflow/orderflow.env"
    assert unit["ExecStart"].endswith("/orderflow serve")


def test_the_readmes_deploy_section_names_only_flags_that_exist() -> None:
    """Every --flag and ORDERFLOW_ variable it names, but those of the system's own commands."""
    readme = (ROOT / "README.md").read_text()
    deploy = readme.partition("\n## Deploy\n")[2].partition("\n## ")[0]
    ours = "\n".join(line for line in deploy.splitlines() if not line.startswith("sudo "))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", ours))
    assert "--auto-process" in named
    assert named <= all_flags(cli), named - all_flags(cli)
    variables = set(re.findall(r"\bORDERFLOW_[A-Z_]*[A-Z]\b", deploy))
    assert variables <= serve_variables(), variables - serve_variables()
