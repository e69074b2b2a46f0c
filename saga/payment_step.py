"""The payment step: handles `ChargePayment`, calls the Payment Service, replies to the saga.

Before it charges, the step checks the command against the payments table: the
payment must exist for that checkout and order, with the same amount and currency. A
command that does not match (forged, or about a checkout this system never had) is
dead-lettered at once and nothing is charged. Only the saga writes that row, in the
transaction that also puts the command in the outbox, so a true command always matches.

The reply is published straight to the broker (confirmed) before the command is
acked; its message_id is derived from the command's, so a redelivered command that
calls the service again (same idempotency key, same result) produces the same reply
id, which the saga's inbox drops.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from contracts import ChargePayment, PaymentDeclined, PaymentSucceeded
from infra.db.batching import Batcher
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.messaging.publisher import Outgoing, Publisher
from infra.tracing import inject
from saga.payment_client import Charged, PaymentClient

log = structlog.get_logger()


def traced(headers: dict[str, Any]) -> dict[str, Any]:
    inject(headers)
    return headers


def reply_id(command_id: uuid.UUID) -> uuid.UUID:
    """The reply's message_id: the same for every delivery of one command."""
    return uuid.uuid5(command_id, "payment-reply")


_PAYMENTS = (
    "SELECT payment_id, checkout_id, order_id, amount, currency FROM payments"
    " WHERE payment_id = ANY(%s::uuid[])"
)
"""The payments the saga recorded, for the commands in hand (one statement for all)."""

Recorded = tuple[uuid.UUID, Decimal, str] | None
"""A payment as the saga recorded it: (order, amount, currency); None if it has none."""


class PaymentStep:
    """Charges once per checkout and reports the outcome."""

    def __init__(
        self, uow: UnitOfWork, payments: PaymentClient, publisher: Publisher, exchange: str
    ) -> None:
        self._uow = uow
        self._payments = payments
        self._publisher = publisher
        self._exchange = exchange
        # The commands in hand at one moment are checked by one read (group commit).
        self._recorded: Batcher[ChargePayment, Recorded] = Batcher(
            "payment checks", self._recorded_all
        )

    async def _recorded_all(self, commands: Sequence[ChargePayment]) -> list[Recorded]:
        async with self._uow.reads() as conn:
            cursor = await conn.execute(_PAYMENTS, ([c.payment_id for c in commands],))
            found = {row[0]: row for row in await cursor.fetchall()}
        recorded: list[Recorded] = []
        for command in commands:
            row = found.get(command.payment_id)
            ours = row is not None and row[1] == command.checkout_id
            recorded.append((row[2], row[3], row[4]) if row is not None and ours else None)
        return recorded

    async def _check(self, command: ChargePayment) -> None:
        """PermanentFailure unless the saga recorded exactly this payment."""
        row = await self._recorded.submit(command)
        if row is None:
            raise PermanentFailure(
                f"no payment {command.payment_id} of checkout {command.checkout_id}: "
                "not charging a payment this system did not record"
            )
        if tuple(row) != (
            command.order_id,
            command.amount,
            command.currency,
        ):
            raise PermanentFailure(
                f"ChargePayment of checkout {command.checkout_id} does not match its payment "
                f"(order, amount or currency differ): not charging it"
            )

    async def handle(self, command: ChargePayment, delivery: Delivery) -> Handled:
        structlog.contextvars.bind_contextvars(order_id=str(command.order_id))
        await self._check(command)
        outcome = await self._payments.charge(
            order_id=command.order_id,
            amount=command.amount,
            currency=command.currency,
            idempotency_key=str(command.checkout_id),
        )
        now = datetime.now(UTC)
        # Calls made in earlier deliveries of this command (each one tried
        # `attempts` times in process before giving up) are not counted here; the
        # delivery attempt is logged and shown by the dead-letter headers.
        reply: PaymentSucceeded | PaymentDeclined
        if isinstance(outcome, Charged):
            reply = PaymentSucceeded(
                checkout_id=command.checkout_id,
                payment_id=command.payment_id,
                provider_payment_id=outcome.provider_payment_id,
                succeeded_at=now,
                attempts=outcome.attempts,
            )
        else:
            reply = PaymentDeclined(
                checkout_id=command.checkout_id,
                payment_id=command.payment_id,
                reason=outcome.reason,
                declined_at=now,
                attempts=outcome.attempts,
            )
        log.info(
            "payment outcome",
            outcome=reply.message_type,
            attempts=outcome.attempts,
            delivery_attempt=delivery.attempt,
        )
        await self._publisher.publish(
            Outgoing.of(
                reply,
                exchange=self._exchange,
                message_id=reply_id(delivery.message_id),
                correlation_id=command.checkout_id,
                headers=traced({}),
            )
        )
        return Handled.DONE
