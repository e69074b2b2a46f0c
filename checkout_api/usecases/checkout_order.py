"""Check out an order: the order change, the checkout and its outbox message in one transaction.

Concurrency, in the order the transaction meets it:

1. An Idempotency-Key already stored answers at once with the first response, even if
   the order has been paid since; stored for another order, the request is refused.
2. `SELECT ... FOR UPDATE` on the order serialises every checkout of that order.
   The active checkout is looked up by a *separate* statement after the lock is held:
   under READ COMMITTED a statement sees the rows committed before it started, so a
   join in the locking statement would miss a checkout committed while it waited.
3. The partial unique index checkouts_one_active_per_order is the guarantee; the lock
   only makes violating it rare. A violation, or a concurrent request that stored the
   same Idempotency-Key first (ON CONFLICT DO NOTHING inserts nothing), rolls the
   attempt back and runs it again, which then finds the winner's checkout or key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from checkout_api.schemas.checkouts import CheckoutOut, StepOut
from checkout_api.usecases.checkout_views import load_active_checkout
from checkout_api.usecases.errors import IdempotencyKeyReused, OrderAlreadyPaid, OrderNotFound
from checkout_api.usecases.sql import (
    FIND_KEY,
    INSERT_CHECKOUT,
    INSERT_STEP,
    LOCK_ORDER,
    REOPEN_ORDER,
    STORE_KEY,
)
from contracts import CheckoutRequested
from infra.db.session import UnitOfWork
from infra.messaging.outbox import add_to_outbox
from infra.tracing import current_trace_id

log = structlog.get_logger(__name__)

ACCEPTED = 202
REQUESTED_STEP = "checkout.requested"
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class CheckoutOutcome:
    """The response to send: the checkout's JSON (or the stored first response)."""

    checkout_id: uuid.UUID
    status_code: int
    body: dict[str, Any]
    started: bool  # this request created the checkout


class _Raced(Exception):
    """A concurrent request won; roll back and try again."""


async def checkout_order(
    uow: UnitOfWork, order_id: uuid.UUID, idempotency_key: str | None = None
) -> CheckoutOutcome:
    """Start a checkout of the order, or return the active one (202 either way)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await _attempt(uow, order_id, idempotency_key)
        except (_Raced, IntegrityError):
            if attempt == _ATTEMPTS:
                raise
            log.info("checkout raced with a concurrent request; retrying", attempt=attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def _attempt(uow: UnitOfWork, order_id: uuid.UUID, key: str | None) -> CheckoutOutcome:
    async with uow() as session:
        conn = await session.connection()
        if key is not None:
            stored = (await conn.execute(FIND_KEY, {"key": key})).first()
            if stored is not None:
                if stored.order_id != order_id:
                    raise IdempotencyKeyReused()
                # JSONB does not keep key order; the model restores the document's.
                body = CheckoutOut.model_validate(stored.response).model_dump(mode="json")
                return CheckoutOutcome(stored.checkout_id, stored.status_code, body, started=False)

        status = (await conn.execute(LOCK_ORDER, {"order_id": order_id})).scalar_one_or_none()
        if status is None:
            raise OrderNotFound(order_id)
        if status == "PAID":
            raise OrderAlreadyPaid(order_id)

        checkout = await load_active_checkout(conn, order_id)
        started = checkout is None
        if checkout is None:
            checkout = await _start(session, conn, order_id, status, key)
        body = checkout.model_dump(mode="json")

        if key is not None:
            stored_key = await conn.execute(
                STORE_KEY,
                {
                    "key": key,
                    "order_id": order_id,
                    "checkout_id": checkout.checkout_id,
                    "status_code": ACCEPTED,
                    "response": body,
                    "created_at": datetime.now(UTC),
                },
            )
            if stored_key.first() is None:
                raise _Raced()
        await session.commit()

    if started:
        log.info("checkout started", checkout_id=str(checkout.checkout_id))
    return CheckoutOutcome(checkout.checkout_id, ACCEPTED, body, started=started)


async def _start(
    session: AsyncSession,
    conn: AsyncConnection,
    order_id: uuid.UUID,
    order_status: str,
    key: str | None,
) -> CheckoutOut:
    """Insert the checkout, its first step and its CheckoutRequested outbox row."""
    now = datetime.now(UTC)
    checkout_id = uuid.uuid4()
    trace_id = current_trace_id()
    step = StepOut(
        name=REQUESTED_STEP,
        status="STARTED",
        at=now,
        detail=_request_detail(key, trace_id),
    )
    await conn.execute(
        INSERT_CHECKOUT,
        {
            "checkout_id": checkout_id,
            "order_id": order_id,
            "state": "STARTED",
            "failure_reason": None,
            "trace_id": trace_id,
            "created_at": now,
            "updated_at": now,
        },
    )
    await conn.execute(INSERT_STEP, {"checkout_id": checkout_id, **step.model_dump()})
    if order_status != "PENDING":  # a FAILED order is pending again while it is retried
        await conn.execute(REOPEN_ORDER, {"target": order_id, "now": now})
    add_to_outbox(
        session,
        CheckoutRequested(checkout_id=checkout_id, order_id=order_id, requested_at=now),
        correlation_id=checkout_id,
    )
    return CheckoutOut(
        checkout_id=checkout_id,
        order_id=order_id,
        state="STARTED",
        failure_reason=None,
        steps=[step],
        created_at=now,
        updated_at=now,
    )


def _request_detail(key: str | None, trace_id: str | None) -> str | None:
    """The first step's detail: what identifies the request (its key, its trace)."""
    parts = [f"Idempotency-Key: {key}"] if key is not None else []
    if trace_id is not None:
        parts.append(f"trace {trace_id}")
    return "; ".join(parts) or None
