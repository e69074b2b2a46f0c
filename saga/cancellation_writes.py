"""What a cancellation's transition writes: its state, its step, its effects and their messages.

Shared by every place a cancellation moves (the API's first transition, the checkout's
final transition, the production cancellation and refund steps), so that a transition
means the same writes wherever it is applied. Each caller runs them in the transaction
that holds the cancellation (and the order) locked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from contracts import CancelProductionOrder, RefundPayment
from contracts.events import (
    CancellationRefund,
    OrderCancellationRejected,
    OrderCancelled,
    OrderPaymentRefunded,
)
from infra.db.statements import Statement
from infra.messaging.failures import PermanentFailure
from infra.messaging.outbox import outbox_row
from saga.cancellation_state_machine import (
    CHECKOUT_WAIT_MARGIN,
    CancelDeadline,
    CancelOrder,
    CancelProduction,
    CompleteRefund,
    Effect,
    Reject,
    RequestRefund,
    ResendRefund,
    SetDeadline,
    Transition,
)

INSERT_CANCELLATION = (
    "INSERT INTO cancellations (cancellation_id, order_id, checkout_id, reason, state,"
    " rejection_reason, trace_id, created_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, NULL, %s, %s, %s)"
)
INSERT_STEP = (
    "INSERT INTO cancellation_steps (cancellation_id, name, status, at, detail)"
    " VALUES (%s, %s, %s, %s, %s)"
)
_SET_STATE = (
    "UPDATE cancellations SET state = %s, rejection_reason = %s, updated_at = %s"
    " WHERE cancellation_id = %s"
)
_CANCEL_ORDER = "UPDATE orders SET status = 'CANCELLED', updated_at = %s WHERE order_id = %s"
_INSERT_REFUND = (
    "INSERT INTO refunds (refund_id, payment_id, order_id, cancellation_id, amount, currency,"
    " status, provider_refund_id, reason, idempotency_key, created_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, 'PENDING', NULL, %s, %s, %s, %s)"
)
SUCCEED_REFUND = (
    "UPDATE refunds SET status = 'SUCCEEDED', provider_refund_id = %s, updated_at = %s"
    " WHERE refund_id = %s"
)
REFUND_PAYMENT = "UPDATE payments SET status = 'REFUNDED', updated_at = %s WHERE payment_id = %s"
_DUE = (
    "COALESCE((SELECT due_at FROM deadlines WHERE saga = 'checkout' AND saga_id = %s"
    " AND kind = 'payment'), %s) + make_interval(secs => %s)"
)
"""When a cancellation's deadline is due: `secs` after the awaited checkout's payment
deadline when the first parameter names a checkout that has one, else after the second."""
_SET_DEADLINE = (
    "INSERT INTO deadlines (deadline_id, saga, saga_id, kind, due_at, attempts, created_at)"
    f" SELECT %s, 'cancellation', %s, %s, {_DUE}, %s, %s"
    " ON CONFLICT (saga, saga_id, kind)"
    " DO UPDATE SET due_at = EXCLUDED.due_at, attempts = EXCLUDED.attempts"
)
_DEADLINE_SET_EVENT = (
    "INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, detail)"
    f" SELECT %s, %s, %s, 'saga', 'deadline.set', %s::text || ' deadline due at '"
    f" || to_char(({_DUE}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+0000\"')"
)
"""The timeline's line for it, written like the checkout's (the due time computed the same
way, so the two statements may also run as one)."""
_DEADLINE_CANCELLED_EVENT = (
    "INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, detail)"
    " SELECT %s, %s, %s, 'saga', 'deadline.cancelled', %s WHERE EXISTS (SELECT 1 FROM deadlines"
    " WHERE saga = 'cancellation' AND saga_id = %s AND kind = %s)"
)
_CANCEL_DEADLINE = (
    "DELETE FROM deadlines WHERE saga = 'cancellation' AND saga_id = %s AND kind = %s"
)


@dataclass(frozen=True, slots=True)
class Payment:
    """The charge a cancellation refunds."""

    payment_id: uuid.UUID
    checkout_id: uuid.UUID
    provider_payment_id: str | None
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class RefundRow:
    refund_id: uuid.UUID
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class Cancelling:
    """A locked cancellation and what its effects need: its order's payment and refund."""

    cancellation_id: uuid.UUID
    order_id: uuid.UUID
    reason: str
    state: str
    payment: Payment | None
    refund: RefundRow | None
    checkout_id: uuid.UUID | None = None
    """The checkout the cancellation was recorded against (None: the order had none)."""


def transition_writes(
    transition: Transition,
    cancelling: Cancelling,
    now: datetime,
    *,
    inserted: bool = False,
    fired: int = 0,
) -> list[Statement]:
    """Everything one transition writes: its effects, its state (if it moved), its step.

    `inserted`: the cancellation row is being inserted in its new state (the first
    transition, in the API), so the state needs no update. `fired`: how often the
    deadline a `SetDeadline` re-sets has fired (0: a new one).
    """
    writes: list[Statement] = []
    refund = cancelling.refund
    for effect in transition.effects:
        effect_writes, refund = _apply(effect, cancelling, refund, now, fired)
        writes.extend(effect_writes)
    if transition.moved and not inserted:
        writes.append(
            (
                _SET_STATE,
                (
                    str(transition.state),
                    transition.rejection_reason,
                    now,
                    cancelling.cancellation_id,
                ),
            )
        )
    step = transition.step
    writes.append(
        (INSERT_STEP, (cancelling.cancellation_id, step.name, str(step.status), now, step.detail))
    )
    return writes


def refund_command(
    refund_id: uuid.UUID,
    payment: Payment,
    order_id: uuid.UUID,
    cancellation_id: uuid.UUID | None,
    reason: str,
    idempotency_key: str,
) -> RefundPayment:
    """The command refunding `payment`: a cancellation's refund, or (no cancellation) the
    refund of a charge that landed after its checkout failed (`saga.orchestrator`)."""
    if payment.provider_payment_id is None:
        raise PermanentFailure(f"payment {payment.payment_id} has no provider payment to refund")
    return RefundPayment(
        refund_id=refund_id,
        payment_id=payment.payment_id,
        provider_payment_id=payment.provider_payment_id,
        order_id=order_id,
        checkout_id=payment.checkout_id,
        cancellation_id=cancellation_id,
        amount=payment.amount,
        currency=payment.currency,
        reason=reason,
        idempotency_key=idempotency_key,
    )


def refunded_event(
    refund_id: uuid.UUID, payment: Payment, order_id: uuid.UUID, reason: str, now: datetime
) -> OrderPaymentRefunded:
    return OrderPaymentRefunded(
        order_id=order_id,
        checkout_id=payment.checkout_id,
        payment_id=payment.payment_id,
        refund_id=refund_id,
        amount=payment.amount,
        currency=payment.currency,
        reason=reason,
        refunded_at=now,
    )


def _apply(
    effect: Effect, c: Cancelling, refund: RefundRow | None, now: datetime, fired: int
) -> tuple[list[Statement], RefundRow | None]:
    """The writes of one effect, and the refund as the effects after it see it."""
    correlation = c.cancellation_id
    match effect:
        case SetDeadline(kind=kind, after=after):
            # After the checkout's payment deadline, or `after` seconds from now.
            checkout_id = c.checkout_id if after is None else None
            seconds = CHECKOUT_WAIT_MARGIN if after is None else after
            due = (checkout_id, now, seconds)
            return [
                (_SET_DEADLINE, (uuid.uuid4(), c.cancellation_id, kind, *due, fired, now)),
                (_DEADLINE_SET_EVENT, (c.cancellation_id, c.order_id, now, kind, *due)),
            ], refund
        case CancelDeadline(kind=kind):
            detail = f"{kind} deadline cancelled"
            return [
                (
                    _DEADLINE_CANCELLED_EVENT,
                    (c.cancellation_id, c.order_id, now, detail, c.cancellation_id, kind),
                ),
                (_CANCEL_DEADLINE, (c.cancellation_id, kind)),
            ], refund
        case CancelOrder(refunded=refunded):
            summary = None
            if refunded:
                if refund is None:
                    raise PermanentFailure(f"cancellation {correlation} has no refund to report")
                summary = CancellationRefund(
                    refund_id=refund.refund_id, amount=refund.amount, currency=refund.currency
                )
            event = OrderCancelled(
                order_id=c.order_id,
                cancellation_id=c.cancellation_id,
                reason=c.reason,
                refund=summary,
                cancelled_at=now,
            )
            return [
                (_CANCEL_ORDER, (now, c.order_id)),
                outbox_row(event, correlation_id=correlation),
            ], refund
        case CancelProduction():
            cancel = CancelProductionOrder(cancellation_id=c.cancellation_id, order_id=c.order_id)
            return [outbox_row(cancel, correlation_id=correlation)], refund
        case RequestRefund():
            payment = _payment_of(c)
            refund_id = uuid.uuid4()
            key = str(c.cancellation_id)
            command = refund_command(
                refund_id, payment, c.order_id, c.cancellation_id, c.reason, key
            )
            row = (
                refund_id,
                payment.payment_id,
                c.order_id,
                c.cancellation_id,
                payment.amount,
                payment.currency,
                c.reason,
                key,
                now,
                now,
            )
            return [
                (_INSERT_REFUND, row),
                outbox_row(command, correlation_id=correlation),
            ], RefundRow(refund_id, payment.amount, payment.currency)
        case ResendRefund():
            payment = _payment_of(c)
            if refund is None:
                raise PermanentFailure(f"cancellation {correlation} has no refund to send again")
            command = refund_command(
                refund.refund_id,
                payment,
                c.order_id,
                c.cancellation_id,
                c.reason,
                str(c.cancellation_id),
            )
            return [outbox_row(command, correlation_id=correlation)], refund
        case CompleteRefund(provider_refund_id=reference):
            payment = _payment_of(c)
            if refund is None:
                raise PermanentFailure(f"cancellation {correlation} has no refund to complete")
            done = refunded_event(refund.refund_id, payment, c.order_id, c.reason, now)
            return [
                (SUCCEED_REFUND, (reference, now, refund.refund_id)),
                (REFUND_PAYMENT, (now, payment.payment_id)),
                outbox_row(done, correlation_id=done.correlation_id()),
            ], refund
        case Reject(reason=reason):
            rejected = OrderCancellationRejected(
                order_id=c.order_id,
                cancellation_id=c.cancellation_id,
                reason=reason,
                rejected_at=now,
            )
            return [outbox_row(rejected, correlation_id=correlation)], refund


def _payment_of(c: Cancelling) -> Payment:
    if c.payment is None:
        raise PermanentFailure(f"cancellation {c.cancellation_id} has no payment to refund")
    return c.payment
