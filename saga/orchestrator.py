"""The saga's shell: apply one message to one checkout in one transaction.

Load the checkout `FOR UPDATE` (serialises concurrent messages for one checkout
across every saga instance), claim the message in the inbox, decide with the pure
state machine, then write the new state, its step, the effects and their outbox
messages, and commit. A crash anywhere before the commit leaves nothing behind and
the message is redelivered.

Every message of every checkout passes here, so the statements are plain SQL on the
transaction's psycopg connection (`UnitOfWork.transaction`): the ORM's identity map,
change tracking and flush cost several times the statements themselves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import structlog

from contracts import ChargePayment, Customer, OrderPaid, OrderPaymentFailed
from infra import metrics
from infra.db.session import UnitOfWork
from infra.db.statements import Statement, as_one
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.messaging.outbox import outbox_row
from saga.state_machine import (
    CheckoutState,
    CompletePayment,
    Effect,
    FailPayment,
    RequestPayment,
    SagaInput,
    decide,
)

log = structlog.get_logger()

CONSUMER = "saga"

_LOAD = (
    f"WITH claimed AS ({inbox.CLAIM.format(rows='VALUES (%s, %s, %s)')})"  # noqa: S608 (constants)
    " SELECT c.state, o.order_id, o.order_name, o.amount, o.currency,"
    " o.customer_email, o.customer_name, p.payment_id, EXISTS (SELECT 1 FROM claimed)"
    " FROM checkouts c JOIN orders o ON o.order_id = c.order_id"
    " LEFT JOIN payments p ON p.checkout_id = c.checkout_id"
    " WHERE c.checkout_id = %s FOR UPDATE OF c"
)
"""The message claimed in the inbox, and the checkout, locked, with its order and its
payment if it has one yet (only the saga writes payments, under this lock, so the row
cannot change before the commit). A duplicate of a message being applied waits, on
the lock or on the first copy's inbox row, until that commits, then is not claimed."""
_INSERT_PAYMENT = (
    "INSERT INTO payments (payment_id, checkout_id, order_id, amount, currency, status,"
    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, 'PENDING', %s, %s)"
)
_SETTLE_PAYMENT = (
    "UPDATE payments SET status = %s, provider_payment_id = %s, failure_reason = %s,"
    " updated_at = %s WHERE payment_id = %s"
)
_SET_ORDER_STATUS = "UPDATE orders SET status = %s, updated_at = %s WHERE order_id = %s"
_SET_STATE = (
    "UPDATE checkouts SET state = %s, failure_reason = %s, updated_at = %s WHERE checkout_id = %s"
)
_INSERT_STEP = (
    "INSERT INTO checkout_steps (checkout_id, name, status, at, detail) VALUES (%s, %s, %s, %s, %s)"
)


@dataclass(frozen=True, slots=True)
class _Loaded:
    """The locked checkout's state and what its effects need of its order."""

    checkout_id: uuid.UUID
    state: str
    order_id: uuid.UUID
    order_name: str
    amount: Decimal
    currency: str
    customer_email: str
    customer_name: str
    payment_id: uuid.UUID | None


class CheckoutSaga:
    """Drives checkouts from STARTED to PAID or FAILED."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def handle(self, message: SagaInput, delivery: Delivery) -> Handled:
        # Pipelined: BEGIN travels with the claim and the lock (one statement), and the
        # writes (one statement) with the COMMIT: two round trips for the transition.
        async with self._uow.transaction() as conn, conn.pipeline():
            load = await conn.execute(
                _LOAD, (CONSUMER, delivery.message_id, datetime.now(UTC), message.checkout_id)
            )
            found = await load.fetchone()
            if found is None:
                raise PermanentFailure(f"no checkout {message.checkout_id}")
            *loaded, claimed = found
            checkout = _Loaded(message.checkout_id, *loaded)
            structlog.contextvars.bind_contextvars(order_id=str(checkout.order_id))
            if not claimed:
                log.info("duplicate message skipped")
                return Handled.DUPLICATE

            previous = CheckoutState(checkout.state)
            transition = decide(previous, message)
            now = datetime.now(UTC)
            writes: list[Statement] = []
            for effect in transition.effects:
                writes.extend(self._apply(effect, checkout, now))
            if transition.changed:
                writes.append(
                    (
                        _SET_STATE,
                        (
                            str(transition.state),
                            transition.failure_reason,
                            now,
                            checkout.checkout_id,
                        ),
                    )
                )
            step = transition.step
            writes.append(
                (
                    _INSERT_STEP,
                    (checkout.checkout_id, step.name, str(step.status), now, step.detail),
                )
            )
            await conn.execute(*as_one(writes))
            # COMMIT as a statement of the pipeline: it travels with the writes and the
            # pipeline's closing sync, where `conn.commit()` would cost a round trip
            # more. A failed commit raises as the block ends, like any statement.
            await conn.execute("COMMIT")
        if transition.changed:
            metrics.SAGA_TRANSITIONS.labels(previous, transition.state).inc()
        log.info("checkout transition", state=transition.state, step=transition.step.name)
        return Handled.DONE

    def _apply(self, effect: Effect, checkout: _Loaded, now: datetime) -> list[Statement]:
        """The writes of one effect, to be run with the transition's others."""
        match effect:
            case RequestPayment():
                payment_id = uuid.uuid4()
                charge = ChargePayment(
                    checkout_id=checkout.checkout_id,
                    order_id=checkout.order_id,
                    payment_id=payment_id,
                    amount=checkout.amount,
                    currency=checkout.currency,
                )
                return [
                    (
                        _INSERT_PAYMENT,
                        (
                            payment_id,
                            checkout.checkout_id,
                            checkout.order_id,
                            checkout.amount,
                            checkout.currency,
                            now,
                            now,
                        ),
                    ),
                    outbox_row(charge, correlation_id=checkout.checkout_id),
                ]
            case CompletePayment(provider_payment_id=reference):
                payment_id = _payment_of(checkout)
                paid = OrderPaid(
                    order_id=checkout.order_id,
                    checkout_id=checkout.checkout_id,
                    payment_id=payment_id,
                    order_name=checkout.order_name,
                    amount=checkout.amount,
                    currency=checkout.currency,
                    customer=Customer(email=checkout.customer_email, name=checkout.customer_name),
                    paid_at=now,
                )
                return [
                    (_SETTLE_PAYMENT, ("SUCCESSFUL", reference, None, now, payment_id)),
                    (_SET_ORDER_STATUS, ("PAID", now, checkout.order_id)),
                    outbox_row(paid, correlation_id=checkout.checkout_id),
                ]
            case FailPayment(reason=reason):
                payment_id = _payment_of(checkout)
                failed = OrderPaymentFailed(
                    order_id=checkout.order_id,
                    checkout_id=checkout.checkout_id,
                    reason=reason,
                    failed_at=now,
                )
                return [
                    (_SETTLE_PAYMENT, ("FAILED", None, reason, now, payment_id)),
                    (_SET_ORDER_STATUS, ("FAILED", now, checkout.order_id)),
                    outbox_row(failed, correlation_id=checkout.checkout_id),
                ]


def _payment_of(checkout: _Loaded) -> uuid.UUID:
    """The checkout's payment, which settling needs; PermanentFailure if it has none."""
    if checkout.payment_id is None:
        raise PermanentFailure(f"checkout {checkout.checkout_id} has no payment to settle")
    return checkout.payment_id
