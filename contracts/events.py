"""Public events on the topic exchange ``{namespace}.orders``: past tense, many listeners.

Downstream teams bind their own queue with routing key ``order.*`` (or one of the
keys below). Delivery is at-least-once: de-duplicate by the AMQP ``message_id``.
A breaking change to a body raises its ``schema_version`` (header ``x-schema-version``).

The AMQP ``correlation_id`` of an event is the value of its body's field named by
``correlation_field``: the checkout for a payment's events, the cancellation for a
cancellation's (an order cancelled before any checkout has none).

The wire formats of money, currency and e-mail (``Money``, ``CurrencyCode``,
``EmailAddress``) are stated in the JSON Schemas (serialisation mode) as what every
message carries; reading a message stays as tolerant as it always was.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, ClassVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
)

from contracts.envelope import Message

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999.99")  # orders.amount is NUMERIC(12, 2)
_PLAIN_DECIMAL = re.compile(r"-?\d+(\.\d+)?", re.ASCII)

MONEY_PATTERN = r"^[0-9]{1,10}\.[0-9]{2}$"
"""Every amount on the wire: positive, at most `MAX_AMOUNT`, exactly two places."""
CURRENCY_PATTERN = r"^[A-Z]{3}$"
"""Every currency on the wire: an ISO 4217 alphabetic code, upper case (the API checks
it against the standard's list before any message is written)."""


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
    WithJsonSchema(
        {
            "type": "string",
            "pattern": MONEY_PATTERN,
            "description": "Decimal string with exactly two places; parse it as a decimal.",
            "examples": ["19.99"],
        },
        mode="serialization",
    ),
]
"""A positive amount with at most two places, serialised as a string ("19.99")."""

CurrencyCode = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": CURRENCY_PATTERN,
            "description": "ISO 4217 alphabetic currency code, upper case.",
            "examples": ["EUR"],
        },
        mode="serialization",
    ),
]
"""A currency as messages carry it: an upper-case ISO 4217 code ("EUR")."""

EmailAddress = Annotated[
    str,
    WithJsonSchema(
        {
            # idn-email, not email: the API accepts internationalised addresses
            # (RFC 6531, e.g. a non-ASCII local part), so a message may carry one.
            "type": "string",
            "format": "idn-email",
            "description": "The customer's e-mail address (personal data: do not log it).",
            "examples": ["jane@example.com"],
        },
        mode="serialization",
    ),
]
"""A customer's e-mail address as messages carry it (checked by the API on the way in)."""


class Customer(BaseModel):
    """Who the order is for."""

    model_config = ConfigDict(frozen=True)

    email: EmailAddress
    name: str


class PublicEvent(Message):
    """A public event: its AMQP `correlation_id` is the body's `correlation_field`."""

    # Field docstrings become the fields' descriptions in the published documents.
    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    correlation_field: ClassVar[str] = "checkout_id"

    def correlation_id(self) -> UUID:
        """The value its AMQP `correlation_id` carries."""
        value = getattr(self, self.correlation_field)
        if not isinstance(value, UUID):
            raise TypeError(f"{self.message_type}.{self.correlation_field} is not a UUID")
        return value


class OrderPaid(PublicEvent):
    """The order's payment succeeded; invoice, email and production act on it."""

    routing_key = "order.paid"

    order_id: UUID
    checkout_id: UUID
    payment_id: UUID
    order_name: str
    amount: Money
    currency: CurrencyCode
    customer: Customer
    paid_at: datetime


class OrderPaymentFailed(PublicEvent):
    """The order's payment was declined; the checkout is FAILED."""

    routing_key = "order.payment_failed"

    order_id: UUID
    checkout_id: UUID
    reason: str
    failed_at: datetime


class CancellationRefund(BaseModel):
    """The refund a cancellation made: the whole payment, returned to the customer."""

    model_config = ConfigDict(frozen=True)

    refund_id: UUID
    amount: Money
    currency: CurrencyCode


class OrderCancelled(PublicEvent):
    """The order is cancelled; `refund` is null if nothing had been charged.

    Invoice and email act on it (the invoice is voided, the customer told). A charged
    order is cancelled only once its production order is cancelled and its payment
    refunded in full.
    """

    routing_key = "order.cancelled"
    correlation_field = "cancellation_id"

    order_id: UUID
    cancellation_id: UUID
    reason: str
    """Why the order was cancelled, as given with the cancel request."""
    refund: CancellationRefund | None
    """The refund of the order's payment, already made; null if nothing was charged."""
    cancelled_at: datetime


class OrderCancellationRejected(PublicEvent):
    """A cancellation was refused (e.g. `already_in_production`); the order is unchanged."""

    routing_key = "order.cancellation_rejected"
    correlation_field = "cancellation_id"

    order_id: UUID
    cancellation_id: UUID
    reason: str
    """Why it was refused: `already_in_production`."""
    rejected_at: datetime


class OrderPaymentRefunded(PublicEvent):
    """A payment was refunded in full, whatever caused it (a cancellation, a late charge)."""

    routing_key = "order.payment_refunded"

    order_id: UUID
    checkout_id: UUID
    payment_id: UUID
    refund_id: UUID
    amount: Money
    currency: CurrencyCode
    reason: str
    """Why: the cancellation's reason, or why a charge that succeeded after its checkout
    had failed was returned."""
    refunded_at: datetime


PUBLIC_EVENTS: tuple[type[PublicEvent], ...] = (
    OrderPaid,
    OrderPaymentFailed,
    OrderCancelled,
    OrderCancellationRejected,
    OrderPaymentRefunded,
)
