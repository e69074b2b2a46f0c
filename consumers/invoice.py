"""Invoice consumer: writes the invoice for a paid order, once; voids it when the order
is cancelled.

The final invoice does not depend on the order in which `OrderPaid` and
`OrderCancelled` arrive. An `OrderCancelled` voids the order's invoice if it has one,
and otherwise has nothing to void (its timeline line says so). An `OrderPaid` that comes
after its order was cancelled (late, redelivered, replayed from a dead-letter queue)
creates the invoice VOIDED: it reads the order's status in the statement that inserts
the invoice, under a share lock on the order's row, so that a cancellation committing
at that moment is either seen (VOIDED) or waits for the invoice to commit (and its
`OrderCancelled`, published only after that, then voids it). Either way no CREATED
invoice is left for a cancelled order, and a charged, cancelled order's books show
the invoice that was issued, voided.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog

from consumers.effects import CANCELLED_ORDER, PAID_CHECKOUT, Effects, Row
from contracts import OrderCancelled, OrderPaid
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled

CONSUMER = "invoice"

# One invoice per order even if a second, distinct OrderPaid ever arrived. The share
# lock on the order: see the module docstring (without it, the statement would read the
# committed status while a cancellation's change waits to commit).
_INSERT_INVOICE = (
    "INSERT INTO invoices (invoice_id, order_id, checkout_id, amount, currency, status,"
    " source_message_id, created_at, updated_at)"
    " SELECT %s::uuid, %s::uuid, %s::uuid, %s::numeric, %s::varchar,"
    " CASE WHEN o.status = 'CANCELLED' THEN 'VOIDED' ELSE 'CREATED' END, %s::uuid,"
    " %s::timestamptz, %s::timestamptz"
    " FROM {claimed} CROSS JOIN LATERAL"
    " (SELECT status FROM orders WHERE order_id = %s::uuid FOR SHARE) o"
    " ON CONFLICT (order_id) DO NOTHING"
)

_VOID_INVOICE = (
    "UPDATE invoices SET status = 'VOIDED', updated_at = %s::timestamptz FROM {claimed}"
    " WHERE invoices.order_id = %s::uuid AND invoices.status <> 'VOIDED'"
)

_INVOICE_OF = "SELECT invoice_id, status FROM invoices WHERE order_id = %s"


class InvoiceConsumer:
    """One invoice per order, for the order's amount, in the same transaction as the inbox row."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._effects = Effects(uow, CONSUMER, PAID_CHECKOUT)
        self._cancellations = Effects(uow, CONSUMER, CANCELLED_ORDER)

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
                event.order_id,
            ),
        )
        applied = await self._effects.record(
            event,
            delivery,
            row=row,
            detail=f"invoice created for {event.amount:.2f} {event.currency}",
        )
        return Handled.DONE if applied else Handled.DUPLICATE

    async def handle_cancelled(self, event: OrderCancelled, delivery: Delivery) -> Handled:
        """Void the order's invoice (or note that there is none yet to void)."""
        structlog.contextvars.bind_contextvars(
            order_id=str(event.order_id), cancellation_id=str(event.cancellation_id)
        )
        # Only for the line's wording: the statement below decides, whatever this read.
        async with self._uow.autocommit() as conn:
            found = await (await conn.execute(_INVOICE_OF, (event.order_id,))).fetchone()
        detail = (
            f"invoice {found[0]} voided"
            if found is not None
            else "no invoice yet: nothing to void (one created later is created VOIDED)"
        )
        row = Row(_VOID_INVOICE, (datetime.now(UTC), event.order_id))
        applied = await self._cancellations.record(event, delivery, row=row, detail=detail)
        if applied:
            structlog.get_logger().info("invoice voided", detail=detail)
        return Handled.DONE if applied else Handled.DUPLICATE
