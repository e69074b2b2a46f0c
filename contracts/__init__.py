"""Message contracts of the checkout system: the public, versioned part.

Public events (``OrderPaid``, ``OrderPaymentFailed``, ``OrderCancelled``,
``OrderCancellationRejected``, ``OrderPaymentRefunded``) are what downstream teams
subscribe to; the internal saga commands are documented here too, but may change.
"""

from contracts.commands import (
    CancelProductionOrder,
    ChargePayment,
    ReconcilePayment,
    RefundPayment,
)
from contracts.envelope import CONTENT_TYPE, SCHEMA_VERSION_HEADER, Message
from contracts.events import (
    PUBLIC_EVENTS,
    CancellationRefund,
    CurrencyCode,
    Customer,
    EmailAddress,
    Money,
    OrderCancellationRejected,
    OrderCancelled,
    OrderPaid,
    OrderPaymentFailed,
    OrderPaymentRefunded,
    PublicEvent,
)

__all__ = [
    "CONTENT_TYPE",
    "PUBLIC_EVENTS",
    "SCHEMA_VERSION_HEADER",
    "CancelProductionOrder",
    "CancellationRefund",
    "ChargePayment",
    "CurrencyCode",
    "Customer",
    "EmailAddress",
    "Message",
    "Money",
    "OrderCancellationRejected",
    "OrderCancelled",
    "OrderPaid",
    "OrderPaymentFailed",
    "OrderPaymentRefunded",
    "PublicEvent",
    "ReconcilePayment",
    "RefundPayment",
]
