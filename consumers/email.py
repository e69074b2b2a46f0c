"""Email consumer: sends the payment confirmation through the Email Service, once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from consumers.effects import Effects, Row
from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.http import ServiceClient
from infra.logging import mask_email
from infra.messaging.consumer import Delivery, Handled

CONSUMER = "email"

_INSERT_SENT = (
    "INSERT INTO email_notifications (order_id, checkout_id, source_message_id, recipient,"
    " sent_at) SELECT %s::uuid, %s::uuid, %s::uuid, %s::varchar, %s::timestamptz FROM {claimed}"
    " ON CONFLICT DO NOTHING"
)


def confirmation(event: OrderPaid) -> dict[str, str]:
    """The e-mail a customer gets when their order is paid."""
    return {
        "to": event.customer.email,
        "subject": f"Order confirmed: {event.order_name}",
        "body": (
            f"Hello {event.customer.name},\n\n"
            f"we received your payment of {event.amount:.2f} {event.currency} for "
            f'"{event.order_name}" (order {event.order_id}). It is on its way to production.\n'
        ),
    }


class EmailConsumer:
    """One confirmation per paid order, keyed by the event's message id."""

    def __init__(self, uow: UnitOfWork, service: ServiceClient) -> None:
        self._effects = Effects(uow, CONSUMER)
        self._service = service

    async def handle(self, event: OrderPaid, delivery: Delivery) -> Handled:
        def row(_: Any) -> Row:
            return Row(
                _INSERT_SENT,
                (
                    event.order_id,
                    event.checkout_id,
                    delivery.message_id,
                    event.customer.email,
                    datetime.now(UTC),
                ),
            )

        return await self._effects.call_once(
            event,
            delivery,
            call=lambda key: self._service.post(
                "/emails", confirmation(event), idempotency_key=key
            ),
            row=row,
            detail=lambda _: f"confirmation e-mail sent to {mask_email(event.customer.email)}",
        )
