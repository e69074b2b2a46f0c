"""Message contracts of the checkout system: the public, versioned part.

Public events (``OrderPaid``, ``OrderPaymentFailed``) are what downstream teams
subscribe to; the internal saga command is documented here too, but may change.
"""

from contracts.commands import ChargePayment
from contracts.envelope import CONTENT_TYPE, SCHEMA_VERSION_HEADER, Message
from contracts.events import PUBLIC_EVENTS, Customer, Money, OrderPaid, OrderPaymentFailed

__all__ = [
    "CONTENT_TYPE",
    "PUBLIC_EVENTS",
    "SCHEMA_VERSION_HEADER",
    "ChargePayment",
    "Customer",
    "Message",
    "Money",
    "OrderPaid",
    "OrderPaymentFailed",
]
