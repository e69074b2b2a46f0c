"""The refund step: handles `RefundPayment`, a retriable step that is never given up.

Before it refunds, the step checks the command against the refunds table: the refund
must be recorded for that payment, amount, currency and key (only the sagas write
that row, in the transaction that puts the command in the outbox), so a forged or
stray command refunds nothing and is dead-lettered at once. Then it calls the Payment
Service (Idempotency-Key = the cancellation, or the refund id of a late charge's
refund) and applies the outcome in one transaction before the command is acked:

- a cancellation's refund: the cancellation saga's `RefundSucceeded` (lock, inbox,
  decide, write, outbox): refund SUCCEEDED, payment REFUNDED, `OrderPaymentRefunded`;
  then cancellation CANCELLED, order CANCELLED, `OrderCancelled` with the refund;
- a refund with no cancellation (a charge that succeeded after its checkout had
  failed): refund SUCCEEDED, payment REFUNDED, `OrderPaymentRefunded`; the order's
  status is left as it is.

A failed call raises: the command is retried with growing delays, then waits in the
dead-letter queue for an operator's replay (the same key: at most one refund).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import structlog

from contracts import RefundPayment
from infra import metrics
from infra.db.session import UnitOfWork
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.messaging.outbox import outbox_row
from saga import cancellation
from saga.cancellation_state_machine import RefundSucceeded
from saga.cancellation_writes import REFUND_PAYMENT, SUCCEED_REFUND, Payment, refunded_event
from saga.refund_client import RefundClient, Refunded

log = structlog.get_logger()

CONSUMER = "refund"

_RECORDED = (
    "SELECT r.payment_id, r.order_id, r.cancellation_id, r.amount, r.currency,"
    " r.idempotency_key, r.status, p.checkout_id, p.provider_payment_id"
    " FROM refunds r JOIN payments p ON p.payment_id = r.payment_id WHERE r.refund_id = %s"
)
_LOCK_REFUND = "SELECT status FROM refunds WHERE refund_id = %s FOR UPDATE"
_CLAIM = inbox.CLAIM.format(rows="VALUES (%s, %s, %s)")


class RefundStep:
    """Refunds once per refund row and applies the outcome."""

    def __init__(self, uow: UnitOfWork, refunds: RefundClient) -> None:
        self._uow = uow
        self._refunds = refunds

    async def handle(self, command: RefundPayment, delivery: Delivery) -> Handled:
        structlog.contextvars.bind_contextvars(
            order_id=str(command.order_id),
            refund_id=str(command.refund_id),
            cancellation_id=str(command.cancellation_id) if command.cancellation_id else None,
        )
        if await self._recorded_status(command) == "SUCCEEDED":
            log.info("refund already succeeded; nothing to do")
            return Handled.DUPLICATE
        try:
            outcome = await self._refunds.refund(
                provider_payment_id=command.provider_payment_id,
                amount=command.amount,
                currency=command.currency,
                reason=command.reason,
                idempotency_key=command.idempotency_key,
            )
        except Exception:
            metrics.REFUNDS.labels("failed").inc()
            raise
        metrics.REFUNDS.labels("succeeded").inc()
        log.info(
            "refund outcome",
            provider_refund_id=outcome.provider_refund_id,
            attempts=outcome.attempts,
            delivery_attempt=delivery.attempt,
        )
        now = datetime.now(UTC)
        async with self._uow.transaction() as conn:
            if command.cancellation_id is not None:
                applied = await cancellation.apply(
                    conn,
                    command.cancellation_id,
                    RefundSucceeded(outcome.provider_refund_id, outcome.attempts),
                    now,
                    claim=(CONSUMER, delivery.message_id),
                )
                await conn.commit()
                cancellation.observe(applied)
                return Handled.DONE if applied.transition is not None else Handled.DUPLICATE
            done = await self._settle_alone(conn, command, outcome, delivery.message_id, now)
            await conn.commit()
        return Handled.DONE if done else Handled.DUPLICATE

    async def _recorded_status(self, command: RefundPayment) -> str:
        """The recorded refund's status; PermanentFailure unless it is exactly this one."""
        async with self._uow.reads() as conn:
            row = await (await conn.execute(_RECORDED, (command.refund_id,))).fetchone()
        if row is None:
            raise PermanentFailure(
                f"no refund {command.refund_id} recorded: not refunding what this system "
                "did not decide to refund"
            )
        recorded = (row[0], row[1], row[2], Decimal(row[3]), row[4], row[5], row[7], row[8])
        expected = (
            command.payment_id,
            command.order_id,
            command.cancellation_id,
            command.amount,
            command.currency,
            command.idempotency_key,
            command.checkout_id,
            command.provider_payment_id,
        )
        if recorded != expected:
            raise PermanentFailure(
                f"RefundPayment {command.refund_id} does not match its recorded refund "
                "(payment, order, amount, currency or key differ): not refunding it"
            )
        return str(row[6])

    async def _settle_alone(
        self,
        conn: psycopg.AsyncConnection[Any],
        command: RefundPayment,
        outcome: Refunded,
        message_id: uuid.UUID,
        now: datetime,
    ) -> bool:
        """A refund with no cancellation: refund SUCCEEDED, payment REFUNDED, the event.
        False if the inbox had the message, or the refund had succeeded already."""
        locked = await (await conn.execute(_LOCK_REFUND, (command.refund_id,))).fetchone()
        claimed = await (await conn.execute(_CLAIM, (CONSUMER, message_id, now))).fetchone()
        if claimed is None or locked is None or locked[0] != "PENDING":
            return False
        payment = Payment(
            command.payment_id,
            command.checkout_id,
            command.provider_payment_id,
            command.amount,
            command.currency,
        )
        event = refunded_event(command.refund_id, payment, command.order_id, command.reason, now)
        for sql, params in (
            (SUCCEED_REFUND, (outcome.provider_refund_id, now, command.refund_id)),
            (REFUND_PAYMENT, (now, command.payment_id)),
            outbox_row(event, correlation_id=command.checkout_id),
        ):
            await conn.execute(sql, params)
        log.info("late charge refunded", payment_id=str(command.payment_id))
        return True
