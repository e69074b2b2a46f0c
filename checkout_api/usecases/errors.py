"""Domain errors raised by the handlers; `checkout_api.errors` maps them to problems.

```
DomainError
 ├── NotFound
 │    ├── OrderNotFound            404
 │    └── CheckoutNotFound         404
 ├── OrderAlreadyPaid              409
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


class OrderAlreadyPaid(DomainError):
    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"order {order_id} is already paid")
        self.order_id = order_id


class IdempotencyKeyReused(DomainError):
    """The key was first used to check out another order."""

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was already used to check out another order")
