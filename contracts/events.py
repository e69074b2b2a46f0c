"""Public events on the topic exchange ``{namespace}.orders``: past tense, many listeners.

Downstream teams bind their own queue with routing key ``order.*`` (or one of the
keys below). Delivery is at-least-once: de-duplicate by the AMQP ``message_id``.
A breaking change to a body raises its ``schema_version`` (header ``x-schema-version``).
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from contracts.envelope import Message

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999.99")  # orders.amount is NUMERIC(12, 2)
_PLAIN_DECIMAL = re.compile(r"-?\d+(\.\d+)?", re.ASCII)


def money_problem(amount: Decimal) -> str | None:
    """Why `amount` is not an amount of money this system handles, or None if it is.

    Checked in this order so that no step can overflow: a huge value is refused by its
    size before it is quantised.
    """
    if not amount.is_finite():
        return "must be a finite number"
    if amount <= 0:
        return "must be greater than zero"
    if amount > MAX_AMOUNT:
        return f"must be at most {MAX_AMOUNT}"
    if amount != amount.quantize(CENT):
        return "must have at most two decimal places"
    return None


def _plain(value: object) -> object:
    # Decimal() would take "1E+999999", "١٢" and "1_0"; a message carries plain digits.
    if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
        raise ValueError('must be a decimal string such as "19.99"')
    return value


def _in_range(amount: Decimal) -> Decimal:
    problem = money_problem(amount)
    if problem is not None:
        raise ValueError(problem)
    return amount


Money = Annotated[
    Decimal,
    BeforeValidator(_plain),
    AfterValidator(_in_range),
    PlainSerializer(lambda v: f"{v:.2f}", return_type=str),
]
"""A positive amount with at most two places, serialised as a string ("19.99")."""


class Customer(BaseModel):
    """Who the order is for."""

    model_config = ConfigDict(frozen=True)

    email: str
    name: str


class OrderPaid(Message):
    """The order's payment succeeded; invoice, email and production act on it."""

    routing_key = "order.paid"

    order_id: UUID
    checkout_id: UUID
    payment_id: UUID
    order_name: str
    amount: Money
    currency: str
    customer: Customer
    paid_at: datetime


class OrderPaymentFailed(Message):
    """The order's payment was declined; the checkout is FAILED."""

    routing_key = "order.payment_failed"

    order_id: UUID
    checkout_id: UUID
    reason: str
    failed_at: datetime


class RefundSummary(BaseModel):
    """The refund an `OrderCancelled` came with."""

    model_config = ConfigDict(frozen=True)

    refund_id: UUID
    amount: Money
    currency: str


class OrderCancelled(Message):
    """The order is cancelled (with its refund when it had been paid)."""

    routing_key = "order.cancelled"

    order_id: UUID
    cancellation_id: UUID
    reason: str
    refund: RefundSummary | None
    cancelled_at: datetime


class OrderCancellationRejected(Message):
    """The cancellation was refused (the order is already in production); nothing changed."""

    routing_key = "order.cancellation_rejected"

    order_id: UUID
    cancellation_id: UUID
    reason: str
    rejected_at: datetime


class OrderPaymentRefunded(Message):
    """A payment was refunded in full, whatever caused it."""

    routing_key = "order.payment_refunded"

    order_id: UUID
    checkout_id: UUID
    payment_id: UUID
    refund_id: UUID
    amount: Money
    currency: str
    reason: str
    refunded_at: datetime


PUBLIC_EVENTS: tuple[type[Message], ...] = (OrderPaid, OrderPaymentFailed)
