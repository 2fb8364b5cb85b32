"""Wire formats only. A full order goes out as `domain.Order` itself: no copy per response.

Request types validate with the domain's rules (`domain.clean_name`, `clean_reason`,
`utc_instant`, the limits); their JSON
Schema, which the OpenAPI document shows, is generated from the same constants, so what the
document allows is what the service accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import msgspec

from orderflow.domain import (
    MAX_BULK_IDS,
    MAX_ITEMS,
    MAX_NAME_LENGTH,
    MAX_QUANTITY,
    MAX_REASON_LENGTH,
    NAME_PATTERN,
    PLAIN_PATTERN,
    Item,
    Order,
    OrderEvent,
    OrderStatus,
    Timestamp,
    check_plain,
    clean_name,
    clean_reason,
    utc_instant,
)
from orderflow.store.base import Instance, MinuteCounts

MAX_BODY_BYTES = 64 * 1024  # the most a request body may be

# A field's own rule, for a Struct's `field_checks`: raises ValueError "field: problem". Its
# __post_init__ stops at the first; a 422 applies each of them to its field (`api.validation`).
Check = Callable[[str], object]

_Name = Annotated[
    str,
    msgspec.Meta(
        description=(
            f"1 to {MAX_NAME_LENGTH} characters, no control characters, something visible;"
            " stored trimmed"
        ),
        extra_json_schema={
            "minLength": 1,
            "maxLength": MAX_NAME_LENGTH,
            "pattern": NAME_PATTERN,
            "examples": ["John Doe"],
        },
    ),
]
# A whole number, sent as a JSON integer or as a number with no fraction (2 and 2.0 alike, as
# JSON Schema's "integer" means): an int is range-checked by msgspec, a float by __post_init__.
_Quantity = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)] | float
QUANTITY_SCHEMA = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_QUANTITY,
    "description": f"a whole number from 1 to {MAX_QUANTITY:,}",
}


class ItemCreate(Item, frozen=True, gc=False, forbid_unknown_fields=True):
    """An item as a client sends it; it is an `Item`, so an order stores it as it is."""

    name: _Name
    quantity: _Quantity  # type: ignore[assignment]  # an int once __post_init__ ran
    field_checks: ClassVar[dict[str, Check]] = {"name": lambda value: clean_name(value, "name")}

    def __post_init__(self) -> None:
        quantity = self.quantity
        if type(quantity) is float:
            if not (1 <= quantity <= MAX_QUANTITY and quantity == int(quantity)):
                raise ValueError(f"quantity: must be a whole number from 1 to {MAX_QUANTITY}")
            msgspec.structs.force_setattr(self, "quantity", int(quantity))
        name = clean_name(self.name, "name")
        if name is not self.name:  # trimmed: strip() returns the very string when it is clean
            msgspec.structs.force_setattr(self, "name", name)


class OrderCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer: _Name
    items: Annotated[
        tuple[ItemCreate, ...],
        msgspec.Meta(min_length=1, max_length=MAX_ITEMS, description=f"1 to {MAX_ITEMS} items"),
    ]
    field_checks: ClassVar[dict[str, Check]] = {
        "customer": lambda value: clean_name(value, "customer")
    }

    def __post_init__(self) -> None:
        customer = clean_name(self.customer, "customer")
        if customer is not self.customer:
            msgspec.structs.force_setattr(self, "customer", customer)


_Reason = Annotated[
    str,
    msgspec.Meta(
        description=(
            f"why, for the order's history: 1 to {MAX_REASON_LENGTH} characters, no control"
            " characters, something visible; stored trimmed"
        ),
        extra_json_schema={
            "minLength": 1,
            "maxLength": MAX_REASON_LENGTH,
            "pattern": NAME_PATTERN,
            "examples": ["the carrier is back"],
        },
    ),
]
_ReasonContains = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_REASON_LENGTH,
        description="text the latest reason contains (any case); no control characters",
        extra_json_schema={"pattern": PLAIN_PATTERN},  # checked by `check_plain`
    ),
]


class ActionRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An operator's retry or cancel of one order."""

    reason: _Reason | None = None
    field_checks: ClassVar[dict[str, Check]] = {"reason": clean_reason}

    def __post_init__(self) -> None:
        if self.reason is not None:
            msgspec.structs.force_setattr(self, "reason", clean_reason(self.reason))


_CustomerPrefix = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description="what the customer's name starts with (any case: Unicode casefold)",
        extra_json_schema={"pattern": PLAIN_PATTERN},  # checked by `check_plain`
    ),
]
_Ids = Annotated[
    list[str],
    msgspec.Meta(
        min_length=1,
        max_length=MAX_BULK_IDS,
        description=f"1 to {MAX_BULK_IDS} order ids (unknown ones are skipped)",
    ),
]


class BulkRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"start": "from", "end": "to"}
):
    """Which orders a bulk action takes: `ids`, or the filters of a listing (each optional,
    `{}` means all), never both. Times are in UTC once decoded. `ids` may be left out but is
    never null: a null standing for "no list" would act on every order."""

    ids: _Ids | msgspec.UnsetType = msgspec.UNSET
    status: OrderStatus | None = None
    customer: _CustomerPrefix | None = None
    start: Timestamp | None = None
    end: Timestamp | None = None
    reason_contains: _ReasonContains | None = None
    reason: _Reason | None = None
    dry_run: bool = False
    field_checks: ClassVar[dict[str, Check]] = {
        "reason_contains": lambda value: check_plain(value, "reason_contains"),
        "customer": lambda value: check_plain(value, "customer"),
        "reason": clean_reason,
    }

    def __post_init__(self) -> None:
        start, end, contains, reason = self.start, self.end, self.reason_contains, self.reason
        if self.ids is not msgspec.UNSET and self.filters:
            raise ValueError(f"ids: not together with a filter ({', '.join(_BULK_FILTERS)})")
        if start is not None:
            msgspec.structs.force_setattr(self, "start", utc_instant(start, "from"))
        if end is not None:
            msgspec.structs.force_setattr(self, "end", utc_instant(end, "to"))
        if contains is not None:
            check_plain(contains, "reason_contains")
        if self.customer is not None:
            check_plain(self.customer, "customer")
        if reason is not None:
            msgspec.structs.force_setattr(self, "reason", clean_reason(reason))

    @property
    def filters(self) -> bool:
        """Whether any filter is given."""
        return any(
            value is not None
            for value in (self.status, self.customer, self.start, self.end, self.reason_contains)
        )


_BULK_FILTERS = ("status", "customer", "from", "to", "reason_contains")
#: `BulkRequest`'s rule across fields, for the OpenAPI document: not `ids` with a filter.
BULK_REQUEST_RULE = {
    "not": {
        "required": ["ids"],
        "properties": {"ids": {"type": "array"}},
        "anyOf": [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
            for name in _BULK_FILTERS
        ],
    }
}


class OrderRef(msgspec.Struct, frozen=True):
    id: str
    status: OrderStatus


# What a retry's answer adds while auto-process is off: nothing ships it until a trigger.
RETRY_NOTE = "retried orders wait in pending until POST /orders/process (auto-process is off)"


class OrderRetried(OrderRef, frozen=True, omit_defaults=True):
    """A retry's answer: the order, and while auto-process is off `note` (`RETRY_NOTE`)."""

    note: str | None = None


class OrderPage(msgspec.Struct, frozen=True):
    orders: list[Order]
    count: int
    next_cursor: str | None


class EventPage(msgspec.Struct, frozen=True):
    """A page of past events; poll again with `after` = `next_cursor`."""

    events: list[OrderEvent]
    count: int
    next_cursor: int


class Throughput(msgspec.Struct, frozen=True, rename={"start": "from", "end": "to"}):
    """Orders submitted, shipped and failed per minute over the last 24 hours: the minutes
    from `from` to `to` (the current one), oldest first, those with nothing counted left out."""

    start: Timestamp
    end: Timestamp
    minutes: list[MinuteCounts]


class InstanceList(msgspec.Struct, frozen=True):
    """The processors sharing the store, live ones first, then by name."""

    instances: list[Instance]


class Message(msgspec.Struct, frozen=True):
    message: str


class ProcessingStarted(msgspec.Struct, frozen=True):
    message: str
    orders: int


class BulkResult(msgspec.Struct, frozen=True):
    """How many orders the action took (`dry_run`: would take; nothing changed)."""

    count: int
    dry_run: bool


class BulkRetried(BulkResult, frozen=True, omit_defaults=True):
    """A bulk retry's answer: the count, and while auto-process is off `note` (`RETRY_NOTE`;
    none after a dry run, which retried nothing)."""

    note: str | None = None


class Health(msgspec.Struct, frozen=True):
    status: str


class Readiness(Health, frozen=True):
    """Ready, and whether pending orders ship by themselves (`auto_process`) or wait for
    POST /orders/process."""

    auto_process: bool


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details; `errors` lists the offending fields of a validation error."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def fix_schemas(components: dict[str, Any]) -> dict[str, Any]:
    """`components` (named JSON Schemas msgspec generated) with what msgspec cannot say: a
    quantity is a JSON Schema integer (2.0 among them)."""
    if "ItemCreate" in components:
        components["ItemCreate"]["properties"]["quantity"] = QUANTITY_SCHEMA
    return components


@functools.cache
def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of a request type, as the OpenAPI document shows it (keep it unchanged:
    it is shared)."""
    schema = msgspec.json.schema(cls)
    fix_schemas(schema.get("$defs", {}))
    return schema


def schema_types() -> list[Any]:
    """Every type the OpenAPI document names."""
    return [OrderCreate, ActionRequest, BulkRequest, Order, OrderRef, OrderPage, Message,
            ProcessingStarted, BulkResult, Health, Readiness, Problem, EventPage, Throughput,
            InstanceList]  # fmt: skip
