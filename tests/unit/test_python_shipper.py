"""PythonShipper and `load_python_shipper`, with the example module a user would copy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from orderflow.domain import Item, Order, Parcel
from orderflow.shippers.python import PythonShipper, load_python_shipper
from orderflow.shipping import MAX_RESULT_BYTES, PermanentFailure, ShipContext
from tests.conftest import make_order
from tests.helpers import ship_context

EXAMPLE = "examples.fulfilment:ship"


def parcel(order: Order) -> Parcel:
    return Parcel(order.id, order=order)


async def test_the_example_ships_with_a_tracking_number() -> None:
    order = make_order()
    result = await load_python_shipper(EXAMPLE).ship(parcel(order), ship_context())
    assert result == {"carrier": "example", "tracking": "EX" + order.id[-12:].upper()}


async def test_the_example_fails_an_unshippable_item_permanently() -> None:
    order = make_order(items=(Item("Widget", 1), Item("Forbidden Item", 1)))
    with pytest.raises(PermanentFailure, match="'Forbidden Item' cannot be shipped"):
        await load_python_shipper(EXAMPLE).ship(parcel(order), ship_context())


async def test_the_example_fails_a_flaky_item_once_then_ships(
    caplog: pytest.LogCaptureFixture,
) -> None:
    order = make_order(items=(Item("Flaky Item", 1),))
    shipper = load_python_shipper(EXAMPLE)
    with caplog.at_level(logging.INFO, logger="test"):
        with pytest.raises(RuntimeError, match="courier busy"):
            await shipper.ship(parcel(order), ship_context(attempt=1))
        assert await shipper.ship(parcel(order), ship_context(attempt=2)) is not None
    assert "courier busy on attempt 1" in caplog.text


async def test_the_function_gets_the_order_as_the_api_shows_it() -> None:
    seen: list[dict[str, Any]] = []

    async def record(order: dict[str, Any], context: ShipContext) -> None:
        seen.append(order)

    order = make_order()
    assert await PythonShipper(record, "test:record").ship(parcel(order), ship_context()) is None
    assert seen == [msgspec.json.decode(msgspec.json.encode(order))]
    assert isinstance(seen[0]["items"], list)
    assert seen[0]["timestamp"] == "2026-01-01T00:00:00.000001Z"


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ([1, 2], "returned a list, not a dict or None"),
        ("T1", "returned a str, not a dict or None"),
        ({"at": object()}, "returned a dict that is not JSON"),
        ({"tracking": "x" * MAX_RESULT_BYTES}, f"over the limit of {MAX_RESULT_BYTES}"),
    ],
    ids=["list", "str", "not-json", "oversized"],
)
async def test_a_result_that_is_not_a_small_json_object_is_a_permanent_failure(
    result: object, problem: str
) -> None:
    async def returns(order: dict[str, Any], context: ShipContext) -> Any:
        return result

    with pytest.raises(PermanentFailure, match=problem):
        await PythonShipper(returns, "test:returns").ship(parcel(make_order()), ship_context())


async def test_the_result_is_a_json_copy() -> None:
    result = {"tracking": "T1", "legs": ("a", "b")}

    async def returns(order: dict[str, Any], context: ShipContext) -> dict[str, Any]:
        return result

    stored = await PythonShipper(returns, "test:returns").ship(parcel(make_order()), ship_context())
    assert stored == {"tracking": "T1", "legs": ["a", "b"]}
    assert stored is not result


@pytest.mark.parametrize("error", [PermanentFailure("refused"), KeyError("address")])
async def test_what_the_function_raises_passes_through(error: Exception) -> None:
    async def fails(order: dict[str, Any], context: ShipContext) -> None:
        raise error

    with pytest.raises(type(error)) as caught:
        await PythonShipper(fails, "test:fails").ship(parcel(make_order()), ship_context())
    assert caught.value is error


async def ship_here(order: dict[str, Any], context: ShipContext) -> dict[str, Any]:
    return {"id": order["id"]}


class Courier:
    async def __call__(self, order: dict[str, Any], context: ShipContext) -> None:
        return None


courier = Courier()


@pytest.mark.parametrize("attribute", ["ship_here", "courier", "Courier.__call__"])
def test_any_async_callable_loads(attribute: str) -> None:
    shipper = load_python_shipper(f"{__name__}:{attribute}")
    assert shipper.name == f"{__name__}:{attribute}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "nosuchpackage.fulfilment:ship",
            "--shipper python:nosuchpackage.fulfilment:ship: no module named 'nosuchpackage'",
        ),
        (
            "examples.nosuchmodule:ship",
            "--shipper python:examples.nosuchmodule:ship: no module named 'examples.nosuchmodule'",
        ),
        (
            "examples.fulfilment:shipp",
            "--shipper python:examples.fulfilment:shipp:"
            " 'examples.fulfilment' has no attribute 'shipp'",
        ),
        (
            "examples.fulfilment:UNSHIPPABLE",
            "--shipper python:examples.fulfilment:UNSHIPPABLE:"
            " UNSHIPPABLE is not an async function (async def)",
        ),
        ("json:dumps", "--shipper python:json:dumps: dumps is not an async function (async def)"),
        ("examples.fulfilment", "--shipper python:examples.fulfilment: expected"),
        (":ship", "--shipper python::ship: expected package.module:function"),
        ("examples.fulfilment:", "--shipper python:examples.fulfilment:: expected"),
        ("a:b:c", "--shipper python:a:b:c: expected package.module:function"),
    ],
)
def test_a_bad_spec_is_a_one_line_value_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^--shipper") as caught:
        load_python_shipper(spec)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_module_that_fails_to_import_is_a_one_line_value_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_shipper.py").write_text("import nosuchdependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="importing broken_shipper failed") as caught:
        load_python_shipper("broken_shipper:ship")
    assert "nosuchdependency" in str(caught.value)
    assert "\n" not in str(caught.value)
