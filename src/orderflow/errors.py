"""The exception tree; the service and the stores raise only these.

    OrderflowError
    ├── NotFound                 no such thing
    │   └── OrderNotFound            no order has that id
    ├── InvalidOrder             the request breaks a domain rule
    │   └── IdempotencyMismatch      an Idempotency-Key reused with another request
    ├── OrderConflict            the order is not in a state that allows this
    │   ├── IllegalTransition        the state machine refuses the move
    │   ├── NotHeld                  the writer no longer holds the order (owner, token)
    │   └── IdempotencyInFlight      a request with that Idempotency-Key is still running
    ├── Gone                     what was asked for is past keeping
    │   └── EventsPruned             the events after a seq were pruned (beyond retention)
    ├── StoreUnavailable         the backing store cannot be reached: nothing happened
    │   └── OutcomeUnknown           the store went away mid-write: it may have happened
    ├── StoreRefusedData         the store cannot hold a value it was given (a bug, not an
    │                            outage: trying again fails the same way); nothing happened
    └── ShuttingDown             the service is stopping and takes no new work

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


class NotFound(OrderflowError):
    """Not found."""


class OrderNotFound(NotFound):
    """Order not found."""


class InvalidOrder(OrderflowError):
    """The order is invalid."""


class IdempotencyMismatch(InvalidOrder):
    """This Idempotency-Key was used with a different request."""


class OrderConflict(OrderflowError):
    """The order is not in a state that allows this."""


class IllegalTransition(OrderConflict):
    """The order cannot move to that status from its current one."""


class NotHeld(OrderConflict):
    """The order is no longer held under that hold (its owner or token changed)."""


class IdempotencyInFlight(OrderConflict):
    """A request with this Idempotency-Key is still being processed."""


class Gone(OrderflowError):
    """What was asked for is no longer kept."""


class EventsPruned(Gone):
    """Events after the seq asked for were pruned; `oldest` is the first seq still kept, where
    a reader that wants whatever there is starts instead."""

    def __init__(self, after: int, oldest: int) -> None:
        super().__init__(f"events after {after} were pruned; the oldest kept is {oldest}")
        self.oldest = oldest


class StoreUnavailable(OrderflowError):
    """The order store is unavailable; nothing was changed. Try again shortly."""


class OutcomeUnknown(StoreUnavailable):
    """The store became unreachable while writing: the change may or may not have been made.
    Check before repeating it (or repeat it with the same Idempotency-Key)."""


class StoreRefusedData(OrderflowError):
    """The store refused the data it was given (a value it cannot hold); nothing was changed.
    The service should have cleaned or refused that value: a bug, never waited out as an
    outage."""


class ShuttingDown(OrderflowError):
    """The service is shutting down and takes no new work."""
