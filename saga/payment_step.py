"""The payment step: handles `ChargePayment`, calls the Payment Service, applies the outcome.

Before it charges, the step checks the command against the payments table: the
payment must exist for that checkout and order, with the same amount and currency. A
command that does not match (forged, or about a checkout this system never had) is
dead-lettered at once and nothing is charged. Only the API writes that row, in the
transaction that also puts the command in the outbox, so a true command always matches.

The outcome is applied to the checkout right here, through the saga's own shell
(`saga.orchestrator`: lock the checkout, claim the outcome in the inbox, decide, write
the state, its step and `OrderPaid` or `OrderPaymentFailed` to the outbox), in one
transaction, and only then is the command acked. The outcome's inbox key is derived
from the command's message_id (`reply_id`): a command redelivered after a crash
between the call and the commit calls the service again with the same idempotency
key (the same answer, no second charge) and applies it under the same key; one
redelivered after the commit finds that key in the inbox and calls nothing.

Once the checkout is final (PAID, or FAILED: declined, or given up on by its
reconciliation), its `ChargePayment` never charges again, wherever a copy of it waited
(a retry queue, a dead-letter queue and a later replay, a redelivery): the step reads
the checkout's state with the payment and never calls `POST /payments` for it. For a
PAID checkout it acks the command. For a FAILED one it looks the charge up instead
(`GET /payments/{key}`) and applies the answer: a copy still about may be the
redelivery of a delivery that sent its charge and died (or lost the answer), and a
charge found is a late success, refunded; none found, nothing happens; no answer, the
saga looks again later (see the state machine's late-charge looks). A call already
past the check when the checkout ended is the one window left: its success is a late
answer, which the state machine refunds when it hears of it (from the call itself, a
look after the end, or such a copy).

`ReconcilePayment` (sent when the payment deadline fires) asks the Payment Service
for the charge made with the checkout's key (`GET /payments/{key}`) and applies what
it says the same way: found SUCCESSFUL or FAILED, the outcome; no such charge,
`payment_timeout`; no answer, a step saying so (the deadline asks again). It asks
for a FAILED checkout too (its `late_charge` deadline, or a reconciliation that waited
past the end): a charge found then is a late success, refunded.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import structlog

from contracts import ChargePayment, ReconcilePayment
from infra.db.batching import Batcher
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure, TransientFailure
from saga import orchestrator
from saga.inputs import (
    PaymentDeclined,
    PaymentNotFound,
    PaymentSucceeded,
    PaymentUnanswered,
    SagaInput,
)
from saga.orchestrator import CheckoutSaga
from saga.payment_client import Charged, Declined, PaymentClient
from saga.state_machine import CheckoutState

log = structlog.get_logger()


def reply_id(command_id: uuid.UUID) -> uuid.UUID:
    """The outcome's inbox key: the same for every delivery of one command."""
    return uuid.uuid5(command_id, "payment-reply")


def lookup_id(command_id: uuid.UUID, answer: str) -> uuid.UUID:
    """The inbox key of what a charge command of a FAILED checkout found by looking its
    charge up (`answer`: the input's type). Apart from `reply_id`, which the delivery
    that sent the charge may still need; and one per answer, so that a copy of the
    command (a redelivery, a replay: the same message_id) finding the charge landed is
    applied even after an earlier copy found nothing, while two copies finding the same
    are applied once."""
    return uuid.uuid5(command_id, f"payment-lookup/{answer}")


_PAYMENTS = (
    "SELECT m.payment_id, m.reply_id, p.checkout_id, p.order_id, p.amount, p.currency,"
    " EXISTS (SELECT 1 FROM inbox i WHERE i.consumer = %s AND i.message_id = m.reply_id),"
    " c.state"
    " FROM unnest(%s::uuid[], %s::uuid[]) AS m (payment_id, reply_id)"
    " LEFT JOIN payments p ON p.payment_id = m.payment_id"
    " LEFT JOIN checkouts c ON c.checkout_id = p.checkout_id"
)
"""The payments recorded for the commands in hand, whether each command's outcome was
applied already, and the checkout's state (one statement for all)."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """A payment as recorded, and whether its command's outcome is applied already."""

    order_id: uuid.UUID
    amount: Decimal
    currency: str
    applied: bool
    state: CheckoutState


Check = tuple[ChargePayment | ReconcilePayment, uuid.UUID]
"""A command and its outcome's inbox key."""


class PaymentStep:
    """Charges once per checkout and applies the outcome to it."""

    def __init__(self, uow: UnitOfWork, payments: PaymentClient, saga: CheckoutSaga) -> None:
        """Args:
        saga: the shell that applies each outcome (also the reconciliations')."""
        self._uow = uow
        self._payments = payments
        self._saga = saga
        # The commands in hand at one moment are checked by one read (group commit).
        self._recorded: Batcher[Check, Recorded | None] = Batcher(
            "payment checks", self._recorded_all
        )

    async def _recorded_all(self, checks: Sequence[Check]) -> list[Recorded | None]:
        async with self._uow.reads() as conn:
            cursor = await conn.execute(
                _PAYMENTS,
                (
                    orchestrator.CONSUMER,
                    [command.payment_id for command, _ in checks],
                    [reply for _, reply in checks],
                ),
            )
            found = {(row[0], row[1]): row[2:] for row in await cursor.fetchall()}
        recorded: list[Recorded | None] = []
        for command, reply in checks:
            checkout_id, order_id, amount, currency, applied, state = found[
                command.payment_id, reply
            ]
            ours = checkout_id is not None and checkout_id == command.checkout_id
            recorded.append(
                Recorded(order_id, amount, currency, applied, CheckoutState(state))
                if ours
                else None
            )
        return recorded

    async def _check(self, command: ChargePayment, reply: uuid.UUID) -> Recorded:
        """The payment as recorded; PermanentFailure unless it was recorded exactly as the
        command says."""
        row = await self._recorded.submit((command, reply))
        if row is None:
            raise PermanentFailure(
                f"no payment {command.payment_id} of checkout {command.checkout_id}: "
                "not charging a payment this system did not record"
            )
        if (row.order_id, row.amount, row.currency) != (
            command.order_id,
            command.amount,
            command.currency,
        ):
            raise PermanentFailure(
                f"ChargePayment of checkout {command.checkout_id} does not match its payment "
                f"(order, amount or currency differ): not charging it"
            )
        return row

    async def handle(self, command: ChargePayment, delivery: Delivery) -> Handled:
        structlog.contextvars.bind_contextvars(order_id=str(command.order_id))
        reply = reply_id(delivery.message_id)
        recorded = await self._check(command, reply)
        if recorded.applied:
            log.info("duplicate message skipped")
            return Handled.DUPLICATE
        if recorded.state is CheckoutState.PAID:
            log.warning("checkout is final; not charging", state=recorded.state)
            return Handled.DONE
        if recorded.state is CheckoutState.FAILED:
            # Never charged now; but a copy of the command still about is a sign its
            # charge may have been sent (by a delivery killed or cut off before its
            # answer): look it up instead, and a charge found is a late success.
            log.warning("checkout is final; not charging", state=recorded.state)
            return await self._look_instead(command, delivery)
        outcome = await self._payments.charge(
            order_id=command.order_id,
            amount=command.amount,
            currency=command.currency,
            idempotency_key=str(command.checkout_id),
        )
        # Calls made in earlier deliveries of this command (each one tried
        # `attempts` times in process before giving up) are not counted here; the
        # delivery attempt is logged and shown by the dead-letter headers.
        result: PaymentSucceeded | PaymentDeclined
        if isinstance(outcome, Charged):
            result = PaymentSucceeded(
                command.checkout_id, outcome.provider_payment_id, outcome.attempts
            )
        else:
            result = PaymentDeclined(command.checkout_id, outcome.reason, outcome.attempts)
        log.info(
            "payment outcome",
            outcome=result.message_type,
            attempts=outcome.attempts,
            delivery_attempt=delivery.attempt,
        )
        return await self._apply(result, reply)

    async def _look_instead(self, command: ChargePayment, delivery: Delivery) -> Handled:
        """A charge command of a FAILED checkout: look its charge up, apply what is found."""
        found = await self._lookup(command.checkout_id)
        lookup = lookup_id(delivery.message_id, found.message_type)
        # The saga's lines name the lookup, an input of its own, not the command: the
        # command charged nothing (its line above says so).
        with structlog.contextvars.bound_contextvars(
            message_id=str(lookup), command_id=str(delivery.message_id)
        ):
            log.info("payment looked up", answer=found.message_type)
            return await self._apply(found, lookup)

    async def reconcile(self, command: ReconcilePayment, delivery: Delivery) -> Handled:
        """Ask the Payment Service what became of the checkout's charge; apply the answer."""
        structlog.contextvars.bind_contextvars(order_id=str(command.order_id))
        reply = reply_id(delivery.message_id)
        row = await self._recorded.submit((command, reply))
        if row is None or row.order_id != command.order_id:
            raise PermanentFailure(
                f"no payment {command.payment_id} of checkout {command.checkout_id}: "
                "nothing to reconcile"
            )
        if row.applied:
            log.info("duplicate message skipped")
            return Handled.DUPLICATE
        if row.state is CheckoutState.PAID:
            log.info("checkout is paid; nothing to reconcile", state=row.state)
            return Handled.DONE
        # A FAILED checkout is asked about too: a charge that landed after its end (a
        # call already on its way) is a late success, which the saga refunds.
        result = await self._lookup(command.checkout_id)
        log.info("payment reconciled", answer=result.message_type)
        return await self._apply(result, reply)

    async def _apply(self, outcome: SagaInput, key: uuid.UUID) -> Handled:
        """Apply an outcome to its checkout under inbox key `key` (committed on return):
        DONE, or DUPLICATE when that key was applied before."""
        applied = await self._saga.apply(outcome, key)
        return Handled.DONE if applied.transition is not None else Handled.DUPLICATE

    async def _lookup(
        self, checkout_id: uuid.UUID
    ) -> PaymentSucceeded | PaymentDeclined | PaymentNotFound | PaymentUnanswered:
        """What the Payment Service says of the charge made with the checkout's key
        (`GET /payments/{key}`), as the saga's input; never raises for an unreachable
        service (that is `PaymentUnanswered`)."""
        try:
            found = await self._payments.find(str(checkout_id))
        except TransientFailure as exc:
            return PaymentUnanswered(checkout_id, str(exc))
        match found:
            case Charged(provider_payment_id=reference):
                return PaymentSucceeded(checkout_id, reference, reconciled=True)
            case Declined(reason=reason):
                return PaymentDeclined(checkout_id, reason, reconciled=True)
            case None:
                return PaymentNotFound(checkout_id)
