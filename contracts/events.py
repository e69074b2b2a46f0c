"""Public events on the topic exchange ``{namespace}.orders``: past tense, many listeners.

Downstream teams bind their own queue with routing key ``order.*`` (or one of the
keys below). Delivery is at-least-once: de-duplicate by the AMQP ``message_id``.
A breaking change to a body raises its ``schema_version`` (header ``x-schema-version``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, PlainSerializer

from contracts.envelope import Message

Money = Annotated[Decimal, PlainSerializer(lambda v: f"{v:.2f}", return_type=str)]
"""A decimal amount, serialised as a string with two places ("19.99")."""


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


PUBLIC_EVENTS: tuple[type[Message], ...] = (OrderPaid, OrderPaymentFailed)
