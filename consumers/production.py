"""Production consumer: sends the paid order to the Production Service, once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from consumers.effects import PAID_CHECKOUT, Effects, Row
from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.http import ServiceClient
from infra.messaging.consumer import Delivery, Handled

CONSUMER = "production"

_INSERT_SUBMITTED = (
    "INSERT INTO production_submissions (order_id, checkout_id, source_message_id,"
    " production_reference, submitted_at) SELECT %s::uuid, %s::uuid, %s::uuid, %s::varchar,"
    " %s::timestamptz FROM {claimed} ON CONFLICT DO NOTHING"
)


def production_order(event: OrderPaid) -> dict[str, Any]:
    return {
        "order_id": str(event.order_id),
        "order_name": event.order_name,
        "checkout_id": str(event.checkout_id),
        "amount": f"{event.amount:.2f}",
        "currency": event.currency,
        "paid_at": event.paid_at.isoformat(),
    }


def _reference(body: Any) -> str | None:
    reference = body.get("production_order_id") if isinstance(body, dict) else None
    return str(reference) if reference else None


class ProductionConsumer:
    """One production order per paid order, keyed by the event's message id."""

    def __init__(self, uow: UnitOfWork, service: ServiceClient) -> None:
        self._effects = Effects(uow, CONSUMER, PAID_CHECKOUT)
        self._service = service

    async def handle(self, event: OrderPaid, delivery: Delivery) -> Handled:
        def row(body: Any) -> Row:
            return Row(
                _INSERT_SUBMITTED,
                (
                    event.order_id,
                    event.checkout_id,
                    delivery.message_id,
                    _reference(body),
                    datetime.now(UTC),
                ),
            )

        return await self._effects.call_once(
            event,
            delivery,
            call=lambda key: self._service.post(
                "/production/orders", production_order(event), idempotency_key=key
            ),
            row=row,
            detail=lambda body: f"sent to production (reference {_reference(body)})",
        )
