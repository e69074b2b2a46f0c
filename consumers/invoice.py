"""Invoice consumer: writes the invoice for a paid order, once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog

from consumers.effects import Effects, Row
from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled

CONSUMER = "invoice"

# One invoice per order even if a second, distinct OrderPaid ever arrived.
_INSERT_INVOICE = (
    "INSERT INTO invoices (invoice_id, order_id, checkout_id, amount, currency, status,"
    " source_message_id, created_at, updated_at)"
    " SELECT %s::uuid, %s::uuid, %s::uuid, %s::numeric, %s::varchar, 'CREATED', %s::uuid,"
    " %s::timestamptz, %s::timestamptz FROM {claimed} ON CONFLICT (order_id) DO NOTHING"
)


class InvoiceConsumer:
    """One invoice per order, for the order's amount, in the same transaction as the inbox row."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._effects = Effects(uow, CONSUMER)

    async def handle(self, event: OrderPaid, delivery: Delivery) -> Handled:
        structlog.contextvars.bind_contextvars(order_id=str(event.order_id))
        now = datetime.now(UTC)
        row = Row(
            _INSERT_INVOICE,
            (
                uuid.uuid4(),
                event.order_id,
                event.checkout_id,
                event.amount,
                event.currency,
                delivery.message_id,
                now,
                now,
            ),
        )
        applied = await self._effects.record(
            event,
            delivery,
            row=row,
            detail=f"invoice created for {event.amount:.2f} {event.currency}",
        )
        return Handled.DONE if applied else Handled.DUPLICATE
