"""What a real `orderflow serve` logs across a database outage, in both log formats: the
outage said once when it starts and once when it ends, in the service's own words, one line
per record and no traceback (an outage is expected; a traceback is for a bug)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.faultproxy import FaultProxy
from tests.faults.conftest import TIMERS, Cluster, submit, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

_TEXT_RECORD = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (?P<level>[A-Z]+) (?P<logger>\S+) "
)
OUTAGE_BEGAN = re.compile(r"the database is unavailable \(.+\); retrying until it is back")
OUTAGE_ENDED = re.compile(r"the database is back after \d+\.\d s")


def records(log: str, fmt: str) -> list[dict[str, Any]]:
    """Every line of `log` as one record (level, logger, message); a line that is not one (a
    traceback's) fails the test."""
    found = []
    for line in log.splitlines():
        if fmt == "json":
            record = json.loads(line)
            found.append({**record, "level": record["level"].upper()})
            continue
        match = _TEXT_RECORD.match(line)
        assert match is not None, f"not a record of its own: {line!r}\n{log}"
        found.append({**match.groupdict(), "message": line[match.end() :]})
    return found


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_database_outage_is_said_once_when_it_starts_and_once_when_it_ends(
    cluster: Cluster, proxy: FaultProxy, database_url: str, fmt: str
) -> None:
    """Point 7: during a cut, each instance logged `WARNING asyncpg.pool Failed to restore the
    pool connection floor; retrying` with a 27-line traceback (three times in 6 s), and every
    loop said the outage again in a line of its own, besides a line for the lost notification
    connection. Now the store says it once when it starts and once when it ends, whatever
    meets it meanwhile (loops, requests, the listener), with no traceback, in both formats."""
    url = proxy.url_for(database_url)
    instance = cluster.start("--database-url", url, "--log-format", fmt, *TIMERS)
    submit(instance, 3)
    proxy.refuse(True)
    proxy.cut_all()
    assert instance.request("GET", "/readyz").status_code == 503
    order = {"customer": "Ada", "items": [{"name": "W", "quantity": 1}]}
    assert instance.request("POST", "/orders", json=order).status_code == 503
    time.sleep(2)  # the outage itself: ten heartbeats, every loop meets it more than once
    proxy.refuse(False)
    # Once ready, the store has said the outage is over: the ping behind /readyz got through.
    wait_for(lambda: instance.request("GET", "/readyz").status_code == 200)
    assert instance.stop() == 0
    log = instance.output()
    said = [
        (r["level"], r["logger"], r["message"])
        for r in records(log, fmt)
        if r["level"] in ("WARNING", "ERROR", "CRITICAL") and not r["logger"].startswith("_granian")
    ]
    assert len(said) == 2, log
    (began_level, began_logger, began), (ended_level, ended_logger, ended) = said
    assert (began_level, began_logger) == ("WARNING", "orderflow.store.postgres")
    assert OUTAGE_BEGAN.match(began), began
    assert (ended_level, ended_logger) == ("WARNING", "orderflow.store.postgres")
    assert OUTAGE_ENDED.match(ended), ended
    assert "Traceback" not in log
