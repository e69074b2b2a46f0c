"""What the checkout saga's state machine takes as input.

Plain values, not broker messages: each is built where the work happens and applied
there, by the same shell (`saga.orchestrator`), in one transaction. The request is
applied by the API in the checkout's own transaction; a payment outcome by the payment
step right after its call (or after its reconciliation's lookup); a deadline by the
claimer that found its row due (`saga.deadlines`). `message_type` names each in the
checkout's history (an input that does not fit writes a `<message_type>.ignored` step).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class CheckoutRequested:
    """A client asked to check out an order (applied by the API)."""

    message_type: ClassVar[str] = "CheckoutRequested"

    checkout_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class PaymentSucceeded:
    """The Payment Service took the money."""

    message_type: ClassVar[str] = "PaymentSucceeded"

    checkout_id: uuid.UUID
    provider_payment_id: str
    attempts: int = 1
    """Calls to the Payment Service this outcome took (retries included)."""
    reconciled: bool = False
    """Found by asking the Payment Service after the deadline, not by the charge."""


@dataclass(frozen=True, slots=True)
class PaymentDeclined:
    """The Payment Service refused the charge: a business outcome, not an error."""

    message_type: ClassVar[str] = "PaymentDeclined"

    checkout_id: uuid.UUID
    reason: str
    attempts: int = 1
    """Calls to the Payment Service this outcome took (retries included)."""
    reconciled: bool = False
    """Found by asking the Payment Service after the deadline, not by the charge."""


@dataclass(frozen=True, slots=True)
class DeadlineReached:
    """A deadline of the checkout came due (`saga.deadlines` claimed its row)."""

    message_type: ClassVar[str] = "DeadlineReached"

    checkout_id: uuid.UUID
    kind: str
    fired: int = 0
    """How often this deadline fired before (its backoff grows with it)."""
    age: float = 0.0
    """Seconds since the deadline was first set (a re-set keeps its start)."""


@dataclass(frozen=True, slots=True)
class PaymentNotFound:
    """Reconciliation: the Payment Service has no charge made with the checkout's key."""

    message_type: ClassVar[str] = "PaymentNotFound"

    checkout_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class PaymentUnanswered:
    """Reconciliation: the Payment Service could not be asked (down, timing out)."""

    message_type: ClassVar[str] = "PaymentUnanswered"

    checkout_id: uuid.UUID
    error: str


SagaInput = (
    CheckoutRequested
    | PaymentSucceeded
    | PaymentDeclined
    | DeadlineReached
    | PaymentNotFound
    | PaymentUnanswered
)
