"""The exception tree; the service and the stores raise only these.

    OrderflowError
    ├── OrderNotFound        no order has that id
    ├── InvalidOrder         the request breaks a domain rule
    ├── OrderConflict        the order is not in a state that allows this
    │   └── IllegalTransition    the state machine refuses the move
    ├── StoreUnavailable     the backing store cannot be reached
    └── ShuttingDown         the service is stopping and takes no new work

Each class docstring is its default message; `api/errors.py` maps each to one HTTP status.
"""

from __future__ import annotations


class OrderflowError(Exception):
    """Something went wrong in orderflow."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class OrderNotFound(OrderflowError):
    """Order not found."""


class InvalidOrder(OrderflowError):
    """The order is invalid."""


class OrderConflict(OrderflowError):
    """The order is not in a state that allows this."""


class IllegalTransition(OrderConflict):
    """The order cannot move to that status from its current one."""


class StoreUnavailable(OrderflowError):
    """The order store is unavailable; try again shortly."""


class ShuttingDown(OrderflowError):
    """The service is shutting down and takes no new work."""
