"""The saga's shell: apply one input to one checkout in one transaction.

Load the checkout `FOR UPDATE` (serialises concurrent inputs for one checkout across
every saga instance), claim the input's id in the inbox, decide with the pure state
machine, then write the new state, its step, the effects and their outbox messages,
and commit. A crash anywhere before the commit leaves nothing behind, and whatever
produced the input (the payment step's command) is redelivered and produces it again
under the same id.

The payment step applies each payment outcome here, in its own process, before it
acks its command: no reply travels through the broker. (The first transition,
STARTED to PAYMENT_PENDING, is applied by the API in the checkout's own statement:
`checkout_api.usecases.checkout_order`.)

Every outcome of every checkout passes here, so the statements are plain SQL on the
transaction's psycopg connection (`UnitOfWork.transaction`): the ORM's identity map,
change tracking and flush cost several times the statements themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import structlog

from contracts import Customer, OrderPaid, OrderPaymentFailed
from infra import metrics
from infra.db.batching import Batcher
from infra.db.session import UnitOfWork
from infra.db.statements import Statement, as_one
from infra.messaging import inbox
from infra.messaging.failures import PermanentFailure
from infra.messaging.outbox import outbox_row
from saga.inputs import SagaInput
from saga.state_machine import (
    CheckoutState,
    CompletePayment,
    Effect,
    FailPayment,
    RequestPayment,
    Transition,
    decide,
)

log = structlog.get_logger()

CONSUMER = "saga"

_LOAD = (
    "WITH m AS (SELECT * FROM unnest(%s::uuid[], %s::uuid[]) AS m (message_id, checkout_id)),"  # noqa: S608 (constants)
    f" claimed AS ({inbox.CLAIM.format(rows='SELECT %s, message_id, %s FROM m')})"
    " SELECT c.checkout_id, c.state, o.order_id, o.order_name, o.amount, o.currency,"
    " o.customer_email, o.customer_name, p.payment_id,"
    " EXISTS (SELECT 1 FROM claimed WHERE claimed.message_id = m.message_id)"
    " FROM m JOIN checkouts c ON c.checkout_id = m.checkout_id"
    " JOIN orders o ON o.order_id = c.order_id"
    " LEFT JOIN payments p ON p.checkout_id = c.checkout_id"
    " ORDER BY c.checkout_id FOR UPDATE OF c"
)
"""The inputs claimed in the inbox, and their checkouts, locked (in id order, so two
batches never wait on each other crosswise), each with its order and its payment if it
has one yet (only the saga writes payments, under this lock, so the row cannot change
before the commit). A duplicate of a message being applied waits, on the lock or on
the first copy's inbox row, until that commits, then is not claimed."""
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


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one input did."""

    order_id: uuid.UUID
    previous: CheckoutState
    transition: Transition | None  # None: its id was applied before (a duplicate), skipped

    @staticmethod
    def of(checkout: _Loaded, transition: Transition | None) -> Applied:
        return Applied(checkout.order_id, CheckoutState(checkout.state), transition)


Item = tuple[SagaInput, uuid.UUID]
"""An input and its id, the inbox's key: the same for every delivery of what caused it."""


class CheckoutSaga:
    """Drives checkouts from PAYMENT_PENDING to PAID or FAILED.

    The inputs in hand at one moment are applied together (`infra.db.batching`), one
    per checkout: one transaction loads and locks their checkouts and claims them, and
    one statement writes every transition. Anything failing in a batch (an input for no
    checkout, say) rolls it back, and its inputs are applied one by one, each in a
    transaction of its own, exactly as if they had never been batched.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._batcher: Batcher[Item, Applied] = Batcher(
            "saga transitions",
            self._apply_all,
            key=lambda item: item[0].checkout_id,  # a checkout's inputs in turn
        )

    async def apply(self, message: SagaInput, message_id: uuid.UUID) -> Applied:
        """Apply `message` (inbox key `message_id`) to its checkout, committed on return."""
        applied = await self._batcher.submit((message, message_id))
        structlog.contextvars.bind_contextvars(order_id=str(applied.order_id))
        transition = applied.transition
        if transition is None:
            log.info("duplicate message skipped")
            return applied
        if transition.changed:
            metrics.SAGA_TRANSITIONS.labels(applied.previous, transition.state).inc()
        log.info("checkout transition", state=transition.state, step=transition.step.name)
        return applied

    async def _apply_all(self, items: Sequence[Item]) -> list[Applied]:
        """Apply each input to its checkout (one input per checkout), in one transaction."""
        now = datetime.now(UTC)
        # Pipelined: BEGIN travels with the claims and the locks (one statement), and
        # every write (one statement) with the COMMIT: two round trips in all.
        async with self._uow.transaction() as conn, conn.pipeline():
            load = await conn.execute(
                _LOAD,
                (
                    [message_id for _, message_id in items],
                    [message.checkout_id for message, _ in items],
                    CONSUMER,
                    now,
                ),
            )
            found = {row[0]: (_Loaded(*row[:-1]), row[-1]) for row in await load.fetchall()}
            applied: list[Applied] = []
            writes: list[Statement] = []
            for message, _ in items:
                if message.checkout_id not in found:
                    raise PermanentFailure(f"no checkout {message.checkout_id}")
                checkout, claimed = found[message.checkout_id]
                if not claimed:
                    applied.append(Applied.of(checkout, None))
                    continue
                transition = decide(CheckoutState(checkout.state), message)
                writes.extend(self._writes(transition, checkout, now))
                applied.append(Applied.of(checkout, transition))
            if writes:
                await conn.execute(*as_one(writes))
            # COMMIT as a statement of the pipeline: it travels with the writes and the
            # pipeline's closing sync, where `conn.commit()` would cost a round trip
            # more. A failed commit raises as the block ends, like any statement.
            await conn.execute("COMMIT")
        return applied

    def _writes(self, transition: Transition, checkout: _Loaded, now: datetime) -> list[Statement]:
        """Everything one transition writes: its effects, its state, its step."""
        writes: list[Statement] = []
        for effect in transition.effects:
            writes.extend(self._apply(effect, checkout, now))
        if transition.changed:
            writes.append(
                (
                    _SET_STATE,
                    (str(transition.state), transition.failure_reason, now, checkout.checkout_id),
                )
            )
        step = transition.step
        writes.append(
            (_INSERT_STEP, (checkout.checkout_id, step.name, str(step.status), now, step.detail))
        )
        return writes

    def _apply(self, effect: Effect, checkout: _Loaded, now: datetime) -> list[Statement]:
        """The writes of one effect, to be run with the transition's others."""
        match effect:
            case RequestPayment():
                # Only STARTED requests a payment, and no checkout is STARTED outside
                # the API's own statement, which applies that transition itself.
                raise PermanentFailure(
                    f"checkout {checkout.checkout_id} is STARTED: its payment is requested "
                    "by the API in the checkout's own transaction"
                )
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
