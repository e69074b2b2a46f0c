"""Invoice consumer: writes the invoice for a paid order, once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from sqlalchemy.dialects.postgresql import insert

from consumers.effects import record_effect
from contracts import OrderPaid
from infra.db.models import Invoice
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled

CONSUMER = "invoice"


class InvoiceConsumer:
    """One invoice per order, for the order's amount, in the same transaction as the inbox row."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def handle(self, event: OrderPaid, delivery: Delivery) -> Handled:
        structlog.contextvars.bind_contextvars(order_id=str(event.order_id))
        now = datetime.now(UTC)
        # One invoice per order even if a second, distinct OrderPaid ever arrived.
        row = (
            insert(Invoice)
            .values(
                invoice_id=uuid.uuid4(),
                order_id=event.order_id,
                checkout_id=event.checkout_id,
                amount=event.amount,
                currency=event.currency,
                status="CREATED",
                source_message_id=delivery.message_id,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[Invoice.order_id])
        )
        async with self._uow() as session:
            applied = await record_effect(
                session,
                consumer=CONSUMER,
                event=event,
                delivery=delivery,
                row=row,
                detail=f"invoice created for {event.amount:.2f} {event.currency}",
            )
            if not applied:
                return Handled.DUPLICATE
            await session.commit()
        return Handled.DONE
