"""Internal commands of the checkout saga on ``{namespace}.internal``.

Commands are imperative and have exactly one handler (``ChargePayment`` -> the payment
step). The step applies its outcome to the saga itself, in one transaction, so no reply
travels back through the broker. Not part of the public contract.
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
