"""Internal commands of the checkout saga on ``{namespace}.internal``.

Commands are imperative and have exactly one handler (``ChargePayment`` and
``ReconcilePayment`` -> the payment step, ``RefundPayment`` -> the refund step,
``CancelProductionOrder`` -> the production cancellation step). Each step applies its
outcome to its saga itself, in one transaction, so no reply travels back through the
broker. Not part of the public contract.
"""

from __future__ import annotations

from uuid import UUID

from contracts.envelope import Message
from contracts.events import Money


class ChargePayment(Message):
    """Charge the order's amount at the Payment Service (idempotency key: the checkout)."""

    routing_key = "payment.charge"

    checkout_id: UUID
    order_id: UUID
    payment_id: UUID
    amount: Money
    currency: str


class ReconcilePayment(Message):
    """Ask the Payment Service what became of the checkout's charge (its deadline passed)."""

    routing_key = "payment.reconcile"

    checkout_id: UUID
    order_id: UUID
    payment_id: UUID


class RefundPayment(Message):
    """Refund a payment in full at the Payment Service (idempotency key: `idempotency_key`).

    The key is the cancellation id for a cancellation's refund, `str(refund_id)` for the
    refund of a charge that succeeded after its checkout had ended (no cancellation).
    """

    routing_key = "payment.refund"

    refund_id: UUID
    payment_id: UUID
    provider_payment_id: str
    order_id: UUID
    checkout_id: UUID
    cancellation_id: UUID | None
    amount: Money
    currency: str
    reason: str
    idempotency_key: str


class CancelProductionOrder(Message):
    """Cancel the order at the Production Service (idempotency key: the cancellation)."""

    routing_key = "production.cancel"

    cancellation_id: UUID
    order_id: UUID
