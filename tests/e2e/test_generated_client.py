"""A client generated from the live /openapi.json (openapi-python-client, into a temporary
folder, used without an edit) drives a real `orderflow serve` that takes bearer tokens:
submit → trigger → get → cancel → retry, and the 401 and 403 the document promises. With
``-s`` it prints the session: each call and its answer."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import eventually_sync
from tests.servers import Server

pytestmark = pytest.mark.e2e

_PACKAGE = "orderflow_generated_client"
_OPERATE = "operate-token-0123456789abcdef"
_READ = "read-token-0123456789abcdef"


@pytest.fixture
def generated(tmp_path: Path, serve: type[Server]) -> Iterator[tuple[Server, ModuleType]]:
    """A server with tokens (its shipments all fail at once, so an order can be retried),
    and the client package generated from its /openapi.json."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"operate {_OPERATE}\nread {_READ}\n")
    server = serve("--auth-tokens", str(tokens), "--ship-delay", "0", "--ship-failure-rate",
                   "1", "--max-attempts", "1", "--log-level", "warning", port=None)  # fmt: skip
    document = server.request("GET", "/openapi.json")
    assert document.status_code == 200
    (tmp_path / "openapi.json").write_bytes(document.content)
    config = tmp_path / "config.json"  # YAML; no formatting hooks: nothing but the generator
    config.write_text(json.dumps({"post_hooks": []}))
    out = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path",
         str(tmp_path / "openapi.json"), "--meta", "none", "--config", str(config),
         "--output-path", str(tmp_path / _PACKAGE), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield server, importlib.import_module(_PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.split(".")[0] == _PACKAGE]:
            del sys.modules[name]


def _say(call: str, answer: Any) -> None:
    status = int(answer.status_code)
    parsed = answer.parsed
    shown = parsed.to_dict() if hasattr(parsed, "to_dict") else parsed
    print(f"{call}\n  → {status} {json.dumps(shown, default=str)}")  # noqa: T201


def test_a_generated_client_submits_triggers_gets_cancels_and_retries(
    generated: tuple[Server, ModuleType],
) -> None:
    server, package = generated
    orders = importlib.import_module(f"{_PACKAGE}.api.orders")
    operate = importlib.import_module(f"{_PACKAGE}.api.operate")
    for name in ("create_order", "get_order"):
        importlib.import_module(f"{orders.__name__}.{name}")
    for name in ("trigger", "cancel_order", "retry_order"):
        importlib.import_module(f"{operate.__name__}.{name}")
    models = importlib.import_module(f"{_PACKAGE}.models")
    with (
        package.AuthenticatedClient(base_url=server.url, token=_OPERATE) as client,
        package.AuthenticatedClient(base_url=server.url, token=_READ) as reader,
        package.Client(base_url=server.url) as nobody,
    ):
        _session(orders, operate, models, client, reader, nobody)


def _session(orders: Any, operate: Any, models: Any, client: Any, reader: Any, nobody: Any) -> None:
    print()  # noqa: T201  # the transcript starts on a line of its own

    body = models.OrderCreate(
        customer="John Doe", items=[models.ItemCreate(name="Monster Energy", quantity=2)]
    )
    refused = orders.create_order.sync_detailed(client=nobody, body=body)
    _say("create_order (no token)", refused)
    assert refused.status_code == 401
    assert refused.parsed.type_ == "/problems/unauthorized"
    forbidden = orders.create_order.sync_detailed(client=reader, body=body)
    _say("create_order (read token)", forbidden)
    assert forbidden.status_code == 403
    assert forbidden.parsed.type_ == "/problems/forbidden"

    created = orders.create_order.sync_detailed(client=client, body=body, idempotency_key="k-1")
    _say("create_order(customer='John Doe', items=[('Monster Energy', 2)])", created)
    assert created.status_code == 201
    order_id = created.parsed.id
    assert created.parsed.status.value == "pending"

    started = operate.trigger.sync_detailed(client=client)
    _say("trigger()", started)
    assert started.status_code == 202
    assert started.parsed.orders == 1

    def failed() -> Any:
        answer = orders.get_order.sync_detailed(order_id, client=reader)
        return answer if answer.parsed.status.value == "failed" else None

    got = eventually_sync(failed)
    _say(f"get_order({order_id!r})", got)
    assert got.parsed.customer == "John Doe"
    assert [(i.name, i.quantity) for i in got.parsed.items] == [("Monster Energy", 2)]

    other = orders.create_order.sync_detailed(client=client, body=body).parsed.id
    cancelled = operate.cancel_order.sync_detailed(
        other, client=client, body=models.ActionRequest(reason="the customer called")
    )
    _say(f"cancel_order({other!r}, reason='the customer called')", cancelled)
    assert cancelled.status_code == 200
    assert cancelled.parsed.status.value == "cancelled"

    retried = operate.retry_order.sync_detailed(order_id, client=client)
    _say(f"retry_order({order_id!r})", retried)
    assert retried.status_code == 200
    assert retried.parsed.status.value == "pending"

    invalid = orders.create_order.sync_detailed(
        client=client,
        body=models.OrderCreate(customer="  ", items=[models.ItemCreate(name="", quantity=0)]),
    )
    _say("create_order(customer='  ', items=[('', 0)])", invalid)
    assert invalid.status_code == 422
    assert [e.field for e in invalid.parsed.errors] == [
        "customer", "items[0].name", "items[0].quantity"
    ]  # fmt: skip
