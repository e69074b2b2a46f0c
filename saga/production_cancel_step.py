"""The production cancellation step: handles `CancelProductionOrder`, the cancellation's pivot.

Calls the Production Service (Idempotency-Key = the cancellation), then applies its
answer to the cancellation saga in one transaction (lock, inbox, decide, write,
outbox) before the command is acked: 200 -> REFUNDING and `RefundPayment`; 409 ->
REJECTED and `OrderCancellationRejected`, nothing else changes. A transient failure
raises, so the command is retried, then dead-lettered for an operator; its replay
calls again with the same key, which is harmless.

A command for a cancellation that has moved past the pivot (a duplicate, a replay
after the answer was applied) calls nothing: the answer is already in.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from contracts import CancelProductionOrder
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from saga import cancellation
from saga.cancellation_state_machine import (
    CancellationState,
    ProductionCancelled,
    ProductionRefused,
)
from saga.production_cancel_client import ProductionCancelClient, Released

log = structlog.get_logger()

CONSUMER = "production-cancel"

_STATE = "SELECT order_id, state FROM cancellations WHERE cancellation_id = %s"


class ProductionCancelStep:
    """Asks production to let the order go, and applies the answer."""

    def __init__(self, uow: UnitOfWork, production: ProductionCancelClient) -> None:
        self._uow = uow
        self._production = production

    async def handle(self, command: CancelProductionOrder, delivery: Delivery) -> Handled:
        structlog.contextvars.bind_contextvars(
            order_id=str(command.order_id), cancellation_id=str(command.cancellation_id)
        )
        async with self._uow.reads() as conn:
            row = await (await conn.execute(_STATE, (command.cancellation_id,))).fetchone()
        if row is None or row[0] != command.order_id:
            raise PermanentFailure(
                f"no cancellation {command.cancellation_id} of order {command.order_id}: "
                "not cancelling a production order this system did not ask to cancel"
            )
        if row[1] != CancellationState.CANCELLING_PRODUCTION:
            log.info("production answer already applied; nothing to ask", state=row[1])
            return Handled.DUPLICATE
        answer = await self._production.cancel(
            order_id=command.order_id, idempotency_key=str(command.cancellation_id)
        )
        message = (
            ProductionCancelled()
            if isinstance(answer, Released)
            else ProductionRefused(answer.reason)
        )
        now = datetime.now(UTC)
        async with self._uow.transaction() as conn:
            applied = await cancellation.apply(
                conn,
                command.cancellation_id,
                message,
                now,
                claim=(CONSUMER, delivery.message_id),
            )
            await conn.commit()
        cancellation.observe(applied)
        return Handled.DONE if applied.transition is not None else Handled.DUPLICATE
