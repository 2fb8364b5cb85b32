"""Wire formats only. A full order goes out as `domain.Order` itself: no copy per response."""

from __future__ import annotations

from typing import Annotated

import msgspec

from orderflow.domain import Items, Order, OrderStatus, clean_customer


class OrderCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer: Annotated[str, msgspec.Meta(min_length=1, description="1 to 200 characters, trimmed")]
    items: Items

    def __post_init__(self) -> None:
        customer = clean_customer(self.customer)
        if customer is not self.customer:
            msgspec.structs.force_setattr(self, "customer", customer)


class OrderRef(msgspec.Struct, frozen=True):
    id: str
    status: OrderStatus


class OrderPage(msgspec.Struct, frozen=True):
    orders: list[Order]
    count: int
    next_cursor: str | None


class Message(msgspec.Struct, frozen=True):
    message: str


class ProcessingStarted(msgspec.Struct, frozen=True):
    message: str
    orders: int


class Health(msgspec.Struct, frozen=True):
    status: str


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
