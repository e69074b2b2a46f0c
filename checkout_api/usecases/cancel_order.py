"""Cancel an order: the cancellation saga's first transition, applied in the request's transaction.

Concurrency, in the order the transaction meets it:

1. An Idempotency-Key already stored answers at once with the first response; stored
   for another order, the request is refused (422).
2. The order is locked (`FOR NO KEY UPDATE`: it waits for a checkout's start and end,
   not for the consumers' rows that refer to the order), alone in its statement. Every
   checkout start locks it too, and so does the checkout's final transition (it writes
   the order), so a cancellation and a checkout of one order never decide on stale news
   of each other.
3. Then, in statements of their own (so each reads what committed before the lock was
   granted): the active cancellation (returned as it is: never a second one), the
   active checkout, the paid payment. The pure state machine decides from that
   (`saga.cancellation_state_machine`); the cancellation, its steps and its effects
   (order CANCELLED with `OrderCancelled`, or `CancelProductionOrder`) are written.
4. The partial unique index `cancellations_one_active_per_order` is the guarantee that
   an order has one active cancellation; the lock only makes violating it rare. A
   violation (or a concurrent request storing the same key first, or a deadlock
   PostgreSQL broke by rolling this attempt back) rolls the attempt back and runs it
   again, which then finds the winner's cancellation.

A cancellation recorded against an active checkout (WAITING_FOR_CHECKOUT) is taken on
by that checkout's final transition, which holds the order's lock when it looks for it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog

from checkout_api.schemas.cancellations import CancellationOut
from checkout_api.schemas.checkouts import StepOut
from checkout_api.usecases.cancellation_views import load_cancellation
from checkout_api.usecases.checkout_order import request_detail
from checkout_api.usecases.errors import (
    IdempotencyKeyReused,
    OrderAlreadyCancelled,
    OrderNotFound,
    RefundWindowExpired,
)
from checkout_api.usecases.idempotency import ACCEPTED, store_first_response
from infra.db.models import ACTIVE_CHECKOUT_STATES
from infra.db.session import UnitOfWork
from infra.tracing import current_trace_id
from saga.cancellation_state_machine import (
    CancellationState,
    OrderSituation,
    Requested,
    decide,
)
from saga.cancellation_writes import (
    INSERT_CANCELLATION,
    INSERT_STEP,
    Cancelling,
    Payment,
    transition_writes,
)

log = structlog.get_logger(__name__)

REQUESTED_STEP = "cancellation.requested"
_ATTEMPTS = 3

_FIND_KEY = (
    "SELECT order_id, cancellation_id, status_code, response FROM cancellation_keys WHERE key = %s"
)
_LOCK_ORDER = "SELECT status FROM orders WHERE order_id = %s FOR NO KEY UPDATE"
_ACTIVE_CANCELLATION = (
    "SELECT cancellation_id FROM cancellations"
    " WHERE order_id = %s AND state NOT IN ('CANCELLED', 'REJECTED')"
)
_ACTIVE_CHECKOUT = "SELECT checkout_id FROM checkouts WHERE order_id = %s AND state = ANY(%s)"
_PAID_PAYMENT = (
    "SELECT payment_id, checkout_id, provider_payment_id, amount, currency, updated_at"
    " FROM payments WHERE order_id = %s AND status = 'SUCCESSFUL'"
    " ORDER BY updated_at DESC LIMIT 1"
)
_STORE_KEY = (
    "INSERT INTO cancellation_keys (key, order_id, cancellation_id, status_code, response,"
    " created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING key"
)


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """The response to send, and whether this request created the cancellation."""

    cancellation_id: uuid.UUID
    status_code: int
    body: dict[str, Any]
    created: bool
    state: str


class _Raced(Exception):
    """A concurrent request won; roll back and try again."""


async def cancel_order(
    uow: UnitOfWork,
    order_id: uuid.UUID,
    reason: str,
    *,
    refund_window_days: int,
    idempotency_key: str | None = None,
) -> CancelOutcome:
    """Cancel the order, or return its active cancellation (202 either way)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await _attempt(uow, order_id, reason, refund_window_days, idempotency_key)
        except (_Raced, psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
            if attempt == _ATTEMPTS:
                raise
            log.info("cancellation raced with a concurrent request; retrying", attempt=attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def _attempt(
    uow: UnitOfWork, order_id: uuid.UUID, reason: str, window_days: int, key: str | None
) -> CancelOutcome:
    async with uow.transaction() as conn:
        if key is not None:
            stored = await (await conn.execute(_FIND_KEY, (key,))).fetchone()
            if stored is not None:
                stored_order, stored_id, stored_status, response = stored
                if stored_order != order_id:
                    raise IdempotencyKeyReused("cancel")
                body = CancellationOut.model_validate(response)
                return CancelOutcome(
                    stored_id, stored_status, body.model_dump(mode="json"), False, body.state
                )

        locked = await (await conn.execute(_LOCK_ORDER, (order_id,))).fetchone()
        if locked is None:
            raise OrderNotFound(order_id)
        (status,) = locked

        active = await (await conn.execute(_ACTIVE_CANCELLATION, (order_id,))).fetchone()
        if active is not None:
            existing = await load_cancellation(conn, active[0])
            if existing is None:
                raise _Raced()
            return await _respond(conn, key, order_id, existing, created=False)
        if status == "CANCELLED":
            raise OrderAlreadyCancelled(order_id)

        now = datetime.now(UTC)
        checkout = await (
            await conn.execute(_ACTIVE_CHECKOUT, (order_id, list(ACTIVE_CHECKOUT_STATES)))
        ).fetchone()
        payment: Payment | None = None
        checkout_id: uuid.UUID | None = None
        if checkout is not None:
            situation, checkout_id = OrderSituation.CHECKOUT_ACTIVE, checkout[0]
        elif status == "PAID":
            paid = await (await conn.execute(_PAID_PAYMENT, (order_id,))).fetchone()
            if paid is None:
                raise RuntimeError(f"order {order_id} is PAID but has no successful payment")
            if paid[5] < now - timedelta(days=window_days):
                raise RefundWindowExpired(order_id, window_days)
            payment = Payment(paid[0], paid[1], paid[2], paid[3], paid[4])
            situation, checkout_id = OrderSituation.PAID, paid[1]
        else:
            situation = OrderSituation.UNPAID

        cancellation_id = uuid.uuid4()
        transition = decide(CancellationState.REQUESTED, Requested(situation))
        cancelling = Cancelling(
            cancellation_id,
            order_id,
            reason,
            CancellationState.REQUESTED,
            payment,
            None,
            checkout_id,
        )
        requested_step = StepOut(
            name=REQUESTED_STEP,
            status=CancellationState.REQUESTED,
            at=now,
            detail=request_detail(key, current_trace_id()),
        )
        writes = [
            (
                INSERT_CANCELLATION,
                (
                    cancellation_id,
                    order_id,
                    checkout_id,
                    reason,
                    str(transition.state),
                    current_trace_id(),
                    now,
                    now,
                ),
            ),
            (
                INSERT_STEP,
                (
                    cancellation_id,
                    requested_step.name,
                    requested_step.status,
                    now,
                    requested_step.detail,
                ),
            ),
        ]
        # The first transition's state is the insert's own; its step and effects follow,
        # after the cancellation they refer to.
        writes += transition_writes(transition, cancelling, now, inserted=True)
        for sql, params in writes:
            await conn.execute(sql, params)
        step = transition.step
        created = CancellationOut(
            cancellation_id=cancellation_id,
            order_id=order_id,
            reason=reason,
            state=transition.state.value,
            rejection_reason=None,
            refund=None,
            steps=[
                requested_step,
                StepOut(name=step.name, status=step.status, at=now, detail=step.detail),
            ],
            created_at=now,
            updated_at=now,
        )
        outcome = await _respond(conn, key, order_id, created, created=True)
    log.info(
        "cancellation requested",
        cancellation_id=str(cancellation_id),
        state=str(transition.state),
        situation=str(situation),
    )
    return outcome


async def _respond(
    conn: psycopg.AsyncConnection[Any],
    key: str | None,
    order_id: uuid.UUID,
    cancellation: CancellationOut,
    *,
    created: bool,
) -> CancelOutcome:
    """Store the key's first response (if any) and commit."""
    body = cancellation.model_dump(mode="json")
    if key is not None and not await store_first_response(
        conn, _STORE_KEY, key, order_id, cancellation.cancellation_id, body
    ):
        raise _Raced()
    await conn.commit()
    return CancelOutcome(cancellation.cancellation_id, ACCEPTED, body, created, cancellation.state)
