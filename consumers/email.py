"""Email consumer: the payment confirmation and the cancellation e-mail, each sent once
through the Email Service (idempotency key: the event's message id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from consumers.effects import CANCELLED_ORDER, PAID_CHECKOUT, Effects, Row
from contracts import OrderCancelled, OrderPaid
from infra.db.session import UnitOfWork
from infra.http import ServiceClient
from infra.logging import mask_email
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure

CONSUMER = "email"

_INSERT_SENT = (
    "INSERT INTO email_notifications (order_id, checkout_id, source_message_id, recipient,"
    " sent_at) SELECT %s::uuid, %s::uuid, %s::uuid, %s::varchar, %s::timestamptz FROM {claimed}"
    " ON CONFLICT DO NOTHING"
)

_INSERT_CANCELLATION_SENT = (
    "INSERT INTO cancellation_emails (cancellation_id, order_id, source_message_id, recipient,"
    " refund_amount, refund_currency, sent_at) SELECT %s::uuid, %s::uuid, %s::uuid,"
    " %s::varchar, %s::numeric, %s::varchar, %s::timestamptz FROM {claimed}"
    " ON CONFLICT DO NOTHING"
)

# An OrderCancelled names the order only: who to write to is the order's.
_CUSTOMER = "SELECT order_name, customer_email, customer_name FROM orders WHERE order_id = %s"


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


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom a cancellation e-mail goes to, and what their order was called."""

    email: str
    name: str
    order_name: str


def cancellation_notice(event: OrderCancelled, to: Recipient) -> dict[str, str]:
    """The e-mail a customer gets when their order is cancelled."""
    if event.refund is not None:
        money = (
            f"We have refunded {event.refund.amount:.2f} {event.refund.currency} to your "
            "payment method."
        )
    else:
        money = "Nothing was charged."
    return {
        "to": to.email,
        "subject": f"Order cancelled: {to.order_name}",
        "body": (
            f"Hello {to.name},\n\n"
            f'your order "{to.order_name}" (order {event.order_id}) is cancelled. {money}\n'
        ),
    }


class EmailConsumer:
    """One e-mail per event, keyed by the event's message id."""

    def __init__(self, uow: UnitOfWork, service: ServiceClient) -> None:
        self._uow = uow
        self._effects = Effects(uow, CONSUMER, PAID_CHECKOUT)
        self._cancellations = Effects(uow, CONSUMER, CANCELLED_ORDER)
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

    async def handle_cancelled(self, event: OrderCancelled, delivery: Delivery) -> Handled:
        """Tell the customer their order is cancelled (and what was refunded)."""
        structlog.contextvars.bind_contextvars(
            order_id=str(event.order_id), cancellation_id=str(event.cancellation_id)
        )
        if await self._cancellations.check(event, delivery):
            return Handled.DUPLICATE
        to = await self._recipient(event)
        refund = event.refund

        def row(_: Any) -> Row:
            return Row(
                _INSERT_CANCELLATION_SENT,
                (
                    event.cancellation_id,
                    event.order_id,
                    delivery.message_id,
                    to.email,
                    refund.amount if refund is not None else None,
                    refund.currency if refund is not None else None,
                    datetime.now(UTC),
                ),
            )

        refunded = f" (refund {refund.amount:.2f} {refund.currency})" if refund else ""
        return await self._cancellations.call_once(
            event,
            delivery,
            call=lambda key: self._service.post(
                "/emails", cancellation_notice(event, to), idempotency_key=key
            ),
            row=row,
            detail=lambda _: f"cancellation e-mail sent to {mask_email(to.email)}{refunded}",
            checked=True,
        )

    async def _recipient(self, event: OrderCancelled) -> Recipient:
        async with self._uow.autocommit() as conn:
            found = await (await conn.execute(_CUSTOMER, (event.order_id,))).fetchone()
        if found is None:  # the guard saw it CANCELLED: only a deleted order gets here
            raise PermanentFailure(f"no order {event.order_id} to write to")
        order_name, email, name = found
        return Recipient(email=email, name=name, order_name=order_name)
