"""Production consumer: sends the paid order to the Production Service, once.

An order cancelled before it reached production is refused by the service (409,
reason `cancelled`): that is the cancellation having won the race, not a failure. The
message is recorded as "cancelled meanwhile" (a line in the checkout's timeline, the
inbox row, no submission) and acked, not dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from consumers.effects import PAID_CHECKOUT, Effects, Row
from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.http import ServiceClient, ServiceRefused
from infra.messaging.consumer import Delivery, Handled
from infra.timeline.record import EFFECT_APPLIED

CONSUMER = "production"
CANCELLED_MEANWHILE = "effect.cancelled_meanwhile"
"""The timeline kind of an order the Production Service refused as cancelled."""

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


@dataclass(frozen=True, slots=True)
class _CancelledMeanwhile:
    """The service's answer when the order was cancelled before it got there."""

    refusal: str


class ProductionConsumer:
    """One production order per paid order, keyed by the event's message id."""

    def __init__(self, uow: UnitOfWork, service: ServiceClient) -> None:
        self._effects = Effects(uow, CONSUMER, PAID_CHECKOUT)
        self._service = service

    async def _submit(self, event: OrderPaid, key: str) -> Any:
        try:
            return await self._service.post(
                "/production/orders", production_order(event), idempotency_key=key
            )
        except ServiceRefused as refused:
            if refused.status == 409 and refused.reason == "cancelled":
                structlog.get_logger().info(
                    "order cancelled meanwhile: not submitted to production"
                )
                return _CancelledMeanwhile(str(refused))
            raise

    async def handle(self, event: OrderPaid, delivery: Delivery) -> Handled:
        def row(body: Any) -> Row | None:
            if isinstance(body, _CancelledMeanwhile):
                return None  # nothing was submitted: the timeline line is the record
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

        def detail(body: Any) -> str:
            if isinstance(body, _CancelledMeanwhile):
                return "cancelled meanwhile: the order was cancelled before it reached production"
            return f"sent to production (reference {_reference(body)})"

        def kind(body: Any) -> str:
            return CANCELLED_MEANWHILE if isinstance(body, _CancelledMeanwhile) else EFFECT_APPLIED

        return await self._effects.call_once(
            event,
            delivery,
            call=lambda key: self._submit(event, key),
            row=row,
            detail=detail,
            kind=kind,
        )
