"""Domain errors raised by the handlers; `checkout_api.errors` maps them to problems.

```
DomainError
 ├── NotFound
 │    ├── OrderNotFound            404
 │    ├── CheckoutNotFound         404
 │    └── CancellationNotFound     404
 ├── OrderAlreadyPaid              409
 ├── OrderAlreadyCancelled         409
 ├── RefundWindowExpired           409
 ├── OrderCancelled                409 (a checkout of a cancelled or cancelling order)
 └── IdempotencyKeyReused          422 (names the Idempotency-Key header)
```
"""

from __future__ import annotations

import uuid


class DomainError(Exception):
    """A request the domain refuses; the message is safe to show to the client."""


class NotFound(DomainError):
    """The addressed resource does not exist."""


class OrderNotFound(NotFound):
    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"order {order_id} does not exist")
        self.order_id = order_id


class CheckoutNotFound(NotFound):
    def __init__(self, checkout_id: uuid.UUID) -> None:
        super().__init__(f"checkout {checkout_id} does not exist")
        self.checkout_id = checkout_id


class CancellationNotFound(NotFound):
    def __init__(self, cancellation_id: uuid.UUID) -> None:
        super().__init__(f"cancellation {cancellation_id} does not exist")
        self.cancellation_id = cancellation_id


class OrderAlreadyCancelled(DomainError):
    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"order {order_id} is already cancelled")
        self.order_id = order_id


class RefundWindowExpired(DomainError):
    def __init__(self, order_id: uuid.UUID, days: int) -> None:
        super().__init__(
            f"order {order_id} was paid more than {days} days ago: too late to cancel it"
        )
        self.order_id = order_id


class OrderCancelled(DomainError):
    """A checkout of an order that is cancelled, or being cancelled."""

    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"order {order_id} is cancelled or being cancelled: not checking it out")
        self.order_id = order_id


class OrderAlreadyPaid(DomainError):
    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"order {order_id} is already paid")
        self.order_id = order_id


class IdempotencyKeyReused(DomainError):
    """The key was first used for another order."""

    def __init__(self, what: str = "check out") -> None:
        super().__init__(f"this Idempotency-Key was already used to {what} another order")
