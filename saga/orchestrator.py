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
`checkout_api.usecases.checkout_order`.) The deadline claimer (`saga.deadlines`) fires
due deadlines here too (`fire_due`), each as an input in the transaction that claimed
its row; the writes set and cancel deadlines as the transitions say.

Every outcome of every checkout passes here, so the statements are plain SQL on the
transaction's psycopg connection (`UnitOfWork.transaction`): the ORM's identity map,
change tracking and flush cost several times the statements themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog

from contracts import Customer, OrderPaid, OrderPaymentFailed, ReconcilePayment
from infra import metrics
from infra.db.batching import Batcher
from infra.db.session import UnitOfWork
from infra.db.statements import Statement, as_one
from infra.messaging import inbox
from infra.messaging.failures import PermanentFailure
from infra.messaging.outbox import outbox_row
from saga import cancellation
from saga import state_machine as sm
from saga.cancellation_writes import Payment, refund_command
from saga.inputs import DeadlineReached, SagaInput
from saga.state_machine import (
    CancelDeadline,
    CheckoutState,
    CompletePayment,
    Effect,
    FailPayment,
    RefundLateCharge,
    RequestPayment,
    SetDeadline,
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
    " ORDER BY c.checkout_id FOR NO KEY UPDATE OF c"
)
"""The inputs claimed in the inbox, and their checkouts, locked (in id order, so two
batches never wait on each other crosswise; NO KEY UPDATE: it serialises the saga's
movers of a checkout all the same, but lets a row that refers to the checkout be
inserted meanwhile, such as a cancellation recorded against it by the API, which holds
the order's lock; with FOR UPDATE that insert and this transaction's write of the order
waited on each other: a deadlock), each with its order and its payment if it
has one yet (only the saga writes payments, under this lock, so the row cannot change
before the commit). A duplicate of a message being applied waits, on the lock or on
the first copy's inbox row, until that commits, then is not claimed."""
_SETTLE_PAYMENT = (
    "UPDATE payments SET status = %s, provider_payment_id = %s, failure_reason = %s,"
    " updated_at = %s WHERE payment_id = %s"
)
_RECORD_LATE_CHARGE = (
    "UPDATE payments SET status = 'SUCCESSFUL', provider_payment_id = %s, updated_at = %s"
    " WHERE payment_id = %s AND status <> 'REFUNDED'"
)
"""A charge that succeeded after its checkout failed: the money was taken, so the payment
says so (with the provider's id, which its refund needs), while the order stays FAILED.
Heard of again once refunded (the call's own answer after a look found it, say), the
payment stays REFUNDED."""
_INSERT_LATE_REFUND = (
    "INSERT INTO refunds (refund_id, payment_id, order_id, cancellation_id, amount, currency,"
    " status, provider_refund_id, reason, idempotency_key, created_at, updated_at)"
    " VALUES (%s, %s, %s, NULL, %s, %s, 'PENDING', NULL, %s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
"""The late charge's refund, which the refund step (`saga.refund_step`) carries out: payment
REFUNDED, `OrderPaymentRefunded`, the order left FAILED. A second late success of the
same payment finds it recorded."""
_REFUND_EXISTS = "SELECT 1 FROM refunds WHERE refund_id = %s"
LATE_CHARGE_REASON = "charged after its checkout had failed"
_SET_ORDER_STATUS = "UPDATE orders SET status = %s, updated_at = %s WHERE order_id = %s"
_SET_STATE = (
    "UPDATE checkouts SET state = %s, failure_reason = %s, updated_at = %s WHERE checkout_id = %s"
)
_INSERT_STEP = (
    "INSERT INTO checkout_steps (checkout_id, name, status, at, detail) VALUES (%s, %s, %s, %s, %s)"
)
_SET_DEADLINE = (
    "INSERT INTO deadlines (deadline_id, saga, saga_id, kind, due_at, attempts, created_at)"
    " VALUES (%s, 'checkout', %s, %s, %s, %s, %s) ON CONFLICT (saga, saga_id, kind)"
    " DO UPDATE SET due_at = EXCLUDED.due_at, attempts = EXCLUDED.attempts"
)
_CANCEL_DEADLINE = "DELETE FROM deadlines WHERE saga = 'checkout' AND saga_id = %s AND kind = %s"
_DELETE_FIRED = "DELETE FROM deadlines WHERE deadline_id = %s"
_DEADLINE_EVENT = (
    "INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, detail)"
    " VALUES (%s, %s, %s, 'saga', %s, %s)"
)
_DEADLINE_CANCELLED_EVENT = (
    "INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, detail)"
    " SELECT %s, %s, %s, 'saga', 'deadline.cancelled', %s WHERE EXISTS (SELECT 1 FROM deadlines"
    " WHERE saga = 'checkout' AND saga_id = %s AND kind = %s)"
)
"""The timeline's line for a cancelled deadline, if there was one: every CTE of the
transition's statement sees the rows as they were before it, the deleted one included."""
_CLAIM_DUE = (
    "SELECT d.deadline_id, d.kind, d.attempts, d.created_at, c.checkout_id, c.state, o.order_id,"
    " o.order_name, o.amount, o.currency, o.customer_email, o.customer_name, p.payment_id"
    " FROM deadlines d JOIN checkouts c ON c.checkout_id = d.saga_id"
    " JOIN orders o ON o.order_id = c.order_id"
    " LEFT JOIN payments p ON p.checkout_id = c.checkout_id"
    " WHERE d.saga = 'checkout' AND d.due_at <= %s"
    " ORDER BY d.due_at LIMIT %s FOR UPDATE OF d, c SKIP LOCKED"
)
"""Due deadlines and their checkouts, locked together. SKIP LOCKED on both: a deadline
another saga instance is firing is not fired twice, and one whose checkout a transition
holds (an outcome being applied, which may delete the deadline) is left for the next
round instead of waited for (which could deadlock with that transition: it locks the
checkout first, the deadline second). A crash before the commit releases both; the row,
still due, fires on a later round."""
_NEXT_DUE = "SELECT min(due_at) FROM deadlines WHERE saga = 'checkout'"


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

    checkout_id: uuid.UUID
    order_id: uuid.UUID
    previous: CheckoutState
    transition: Transition | None  # None: its id was applied before (a duplicate), skipped

    @staticmethod
    def of(checkout: _Loaded, transition: Transition | None) -> Applied:
        return Applied(
            checkout.checkout_id, checkout.order_id, CheckoutState(checkout.state), transition
        )


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

    def __init__(
        self,
        uow: UnitOfWork,
        payment_deadline: float = 120.0,
        late_window: float = sm.LATE_CHARGE_WINDOW,
    ) -> None:
        """Args:
        payment_deadline: `CHECKOUT_PAYMENT_DEADLINE`, seconds.
        late_window: how long after a checkout failed a charge on its way can still
            land (`state_machine.late_charge_window` of the HTTP settings), seconds."""
        self._uow = uow
        self._payment_deadline = payment_deadline
        self._late_window = late_window
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
            ended: list[tuple[uuid.UUID, bool]] = []
            for message, _ in items:
                if message.checkout_id not in found:
                    raise PermanentFailure(f"no checkout {message.checkout_id}")
                checkout, claimed = found[message.checkout_id]
                if not claimed:
                    applied.append(Applied.of(checkout, None))
                    continue
                transition = decide(
                    CheckoutState(checkout.state), message, late_window=self._late_window
                )
                writes.extend(self._writes(transition, checkout, now))
                applied.append(Applied.of(checkout, transition))
                if transition.state.is_final and transition.state != checkout.state:
                    ended.append((checkout.checkout_id, transition.state is CheckoutState.PAID))
            if writes:
                await conn.execute(*as_one(writes))
            # Cancel meets checkout: the writes above hold the orders' locks (they set
            # their status), so a cancellation requested before them is seen here (its
            # request held the lock first), and one requested after them sees the
            # checkout ended. A statement of its own: its snapshot is taken after the
            # locks were granted. Whatever was waiting goes on in this transaction.
            taken_over = await cancellation.checkouts_ended(conn, ended, now)
            # COMMIT as a statement of the pipeline: it travels with the writes and the
            # pipeline's closing sync, where `conn.commit()` would cost a round trip
            # more. A failed commit raises as the block ends, like any statement.
            await conn.execute("COMMIT")
        for moved in taken_over:
            cancellation.observe(moved)
        return applied

    async def fire_due(self, limit: int = 50) -> list[Applied]:
        """Fire the deadlines due now (at most `limit`), each as an input to its checkout's
        state machine, in one transaction: the transition's writes, and the fired row
        deleted unless the transition set it again. Committed on return."""
        now = datetime.now(UTC)
        applied: list[Applied] = []
        async with self._uow.transaction() as conn:
            rows = await (await conn.execute(_CLAIM_DUE, (now, limit))).fetchall()
            writes: list[Statement] = []
            seen: set[uuid.UUID] = set()
            for deadline_id, kind, fired, set_at, *loaded in rows:
                checkout = _Loaded(*loaded)
                if checkout.checkout_id in seen:  # one transition per checkout a round
                    continue
                seen.add(checkout.checkout_id)
                age = max((now - set_at).total_seconds(), 0.0)
                message = DeadlineReached(checkout.checkout_id, kind, fired, age)
                transition = decide(
                    CheckoutState(checkout.state), message, late_window=self._late_window
                )
                writes.extend(self._writes(transition, checkout, now, fired=fired + 1))
                if not any(
                    isinstance(e, SetDeadline) and e.kind == kind for e in transition.effects
                ):
                    writes.append((_DELETE_FIRED, (deadline_id,)))
                applied.append(Applied.of(checkout, transition))
            if writes:
                await conn.execute(*as_one(writes))
            await conn.commit()
        for one in applied:
            if one.transition is not None:
                log.info(
                    "deadline fired",
                    checkout_id=str(one.checkout_id),
                    order_id=str(one.order_id),
                    state=one.transition.state,
                    step=one.transition.step.name,
                )
                if one.transition.changed:
                    metrics.SAGA_TRANSITIONS.labels(one.previous, one.transition.state).inc()
        return applied

    async def next_due(self) -> datetime | None:
        """When the earliest deadline of any checkout is due (None: there is none)."""
        async with self._uow.reads() as conn:
            row = await (await conn.execute(_NEXT_DUE)).fetchone()
        return row[0] if row is not None else None

    def _writes(
        self, transition: Transition, checkout: _Loaded, now: datetime, *, fired: int = 0
    ) -> list[Statement]:
        """Everything one transition writes: its effects, its state, its step. `fired`:
        how often the deadline a `SetDeadline` re-sets has fired (0: a new one)."""
        writes: list[Statement] = []
        for effect in transition.effects:
            writes.extend(self._apply(effect, checkout, now, fired))
        if transition.state != checkout.state:
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

    def _apply(
        self, effect: Effect, checkout: _Loaded, now: datetime, fired: int
    ) -> list[Statement]:
        """The writes of one effect, to be run with the transition's others."""
        match effect:
            case SetDeadline(kind=kind, after=after):
                seconds = self._payment_deadline if after is None else after
                due = now + timedelta(seconds=seconds)
                detail = f"{kind} deadline due at {due:%Y-%m-%dT%H:%M:%S%z}"
                return [
                    (
                        _SET_DEADLINE,
                        (uuid.uuid4(), checkout.checkout_id, kind, due, fired, now),
                    ),
                    (
                        _DEADLINE_EVENT,
                        (checkout.checkout_id, checkout.order_id, now, "deadline.set", detail),
                    ),
                ]
            case CancelDeadline(kind=kind):
                return [
                    (
                        _DEADLINE_CANCELLED_EVENT,
                        (
                            checkout.checkout_id,
                            checkout.order_id,
                            now,
                            f"{kind} deadline cancelled",
                            checkout.checkout_id,
                            kind,
                        ),
                    ),
                    (_CANCEL_DEADLINE, (checkout.checkout_id, kind)),
                ]
            case sm.ReconcilePayment():
                reconcile = ReconcilePayment(
                    checkout_id=checkout.checkout_id,
                    order_id=checkout.order_id,
                    payment_id=_payment_of(checkout),
                )
                return [outbox_row(reconcile, correlation_id=checkout.checkout_id)]
            case RefundLateCharge(provider_payment_id=reference):
                payment_id = _payment_of(checkout)
                # One refund per late charge whatever is redelivered: its id (and so its
                # idempotency key at the Payment Service) is derived from the payment.
                refund_id = uuid.uuid5(payment_id, "late-charge-refund")
                charge = Payment(
                    payment_id, checkout.checkout_id, reference, checkout.amount, checkout.currency
                )
                refund = refund_command(
                    refund_id, charge, checkout.order_id, None, LATE_CHARGE_REASON, str(refund_id)
                )
                return [
                    (_RECORD_LATE_CHARGE, (reference, now, payment_id)),
                    (
                        _INSERT_LATE_REFUND,
                        (
                            refund_id,
                            payment_id,
                            checkout.order_id,
                            checkout.amount,
                            checkout.currency,
                            LATE_CHARGE_REASON,
                            str(refund_id),
                            now,
                            now,
                        ),
                    ),
                    # Heard of twice (a look found it, then the call's own answer came),
                    # the refund is asked for once: not again once its row exists.
                    outbox_row(
                        refund,
                        correlation_id=checkout.checkout_id,
                        unless=(_REFUND_EXISTS, (refund_id,)),
                    ),
                ]
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
