"""Every exception orderflow raises, and the tree they make.

    Exception
    ├── OrderflowError           what the service and the stores raise; `api/errors.py` maps
    │   │                        each to one HTTP status and problem type
    │   ├── NotFound                 no such thing
    │   │   ├── OrderNotFound            no order has that id
    │   │   └── WebhookNotFound          no webhook subscription has that id
    │   ├── InvalidOrder             the request breaks a domain rule
    │   │   └── IdempotencyMismatch      an Idempotency-Key reused with another request
    │   ├── OrderConflict            the order is not in a state that allows this
    │   │   ├── IllegalTransition        the state machine refuses the move
    │   │   ├── NotHeld                  the writer no longer holds the order (owner, token)
    │   │   └── IdempotencyInFlight      a request with that Idempotency-Key is still running
    │   ├── Gone                     what was asked for is past keeping
    │   │   └── EventsPruned             the events after a seq were pruned (beyond retention)
    │   ├── StoreUnavailable         the backing store cannot be reached: nothing happened
    │   │   └── OutcomeUnknown           the store went away mid-write: it may have happened
    │   ├── StoreRefusedData         the store cannot hold a value it was given (a bug, not an
    │   │                            outage: trying again fails the same way); nothing happened
    │   └── ShuttingDown             the service is stopping and takes no new work
    ├── PermanentFailure         a shipper's: the shipment cannot succeed, the order fails now
    ├── RetryableFailure         a shipper's: this attempt failed, another may succeed
    ├── StartupError             the service cannot start (the message names the flag or file)
    ├── SnapshotError            a snapshot file cannot be used (the message says why)
    └── SettingError (ValueError)  a flag's or ORDERFLOW_* variable's value is wrong

Two families are raised and caught within one module's boundary, and defined there:
`shippers.httpconnection.HttpClientError` (▸ CannotConnect, ConnectionClosed, Timeout,
ProtocolViolation ▸ HeadTooLarge: the HTTP shipper's client; each becomes a failed attempt) and
`webhooks.destinations.RefusedDestination` (an OSError: a webhook connection to an address
webhooks may not go to; it becomes a failed attempt).

Each class docstring is its default message.
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


class WebhookNotFound(NotFound):
    """Webhook subscription not found."""


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


class PermanentFailure(Exception):
    """The shipment cannot succeed (a refused address, say): the order fails at once, with this
    message as its reason, and is not tried again. Raised by a shipper."""


class RetryableFailure(Exception):
    """This attempt failed but another may succeed; `retry_after_s`, when given, is the least
    time to wait before it (the receiver's ``Retry-After``). Raised by a shipper."""

    def __init__(self, reason: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class StartupError(Exception):
    """The service cannot start; the message says why, naming the flag or file at fault."""


class SnapshotError(Exception):
    """The snapshot cannot be used; the message says why, in the user's terms."""


class SettingError(ValueError):
    """A setting is wrong; `flag` names it as the user typed it."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
