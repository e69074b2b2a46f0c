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

Every checkout request runs this, so it is plain SQL on the transaction's psycopg
connection in pipeline mode: the lock and the active-checkout lookup travel together
(in that order: the server runs a pipeline's statements one after the other, so the
lookup still starts after the lock is held), then the writes (the checkout, its
step, its outbox row and the key: one statement of data-modifying CTEs) and the
COMMIT. About three round trips, where SQLAlchemy statements one by one took ten.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb
from sqlalchemy.exc import IntegrityError

from checkout_api.schemas.checkouts import CheckoutOut, StepOut
from checkout_api.usecases.errors import IdempotencyKeyReused, OrderAlreadyPaid, OrderNotFound
from contracts import CheckoutRequested
from infra.db.models import ACTIVE_CHECKOUT_STATES
from infra.db.session import UnitOfWork
from infra.db.statements import Statement, as_one
from infra.messaging.outbox import outbox_row
from infra.tracing import current_trace_id

log = structlog.get_logger(__name__)

ACCEPTED = 202
REQUESTED_STEP = "checkout.requested"
_ATTEMPTS = 3

_FIND_KEY = (
    "SELECT order_id, checkout_id, status_code, response FROM idempotency_keys WHERE key = %s"
)
_LOCK_ORDER = "SELECT status FROM orders WHERE order_id = %s FOR UPDATE"
"""The order's status, locking its row until the transaction ends."""
_ACTIVE_CHECKOUT = (
    "SELECT c.checkout_id, c.order_id, c.state, c.failure_reason, c.created_at, c.updated_at,"
    " s.name, s.status, s.at, s.detail"
    " FROM checkouts c LEFT OUTER JOIN checkout_steps s ON s.checkout_id = c.checkout_id"
    " WHERE c.order_id = %s AND c.state = ANY(%s) ORDER BY s.id"
)
"""The order's active checkout with its steps; the partial unique index allows one."""
_ACTIVE_STATES = list(ACTIVE_CHECKOUT_STATES)

_INSERT_CHECKOUT = (
    "INSERT INTO checkouts (checkout_id, order_id, state, failure_reason, trace_id,"
    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_STEP = (
    "INSERT INTO checkout_steps (checkout_id, name, status, at, detail) VALUES (%s, %s, %s, %s, %s)"
)
_REOPEN_ORDER = "UPDATE orders SET status = 'PENDING', updated_at = %s WHERE order_id = %s"
_STORE_KEY = (
    "INSERT INTO idempotency_keys (key, order_id, checkout_id, status_code, response, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING key"
)
"""Store a key's first response; returns no row if another request stored it first."""


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
        except (_Raced, IntegrityError, psycopg.IntegrityError):
            if attempt == _ATTEMPTS:
                raise
            log.info("checkout raced with a concurrent request; retrying", attempt=attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def _attempt(uow: UnitOfWork, order_id: uuid.UUID, key: str | None) -> CheckoutOutcome:
    async with uow.transaction() as conn, conn.pipeline():
        if key is not None:
            stored = await (await conn.execute(_FIND_KEY, (key,))).fetchone()
            if stored is not None:
                stored_order, stored_checkout, stored_status, response = stored
                if stored_order != order_id:
                    raise IdempotencyKeyReused()
                # JSONB does not keep key order; the model restores the document's.
                body = CheckoutOut.model_validate(response).model_dump(mode="json")
                return CheckoutOutcome(stored_checkout, stored_status, body, started=False)

        locked = await conn.execute(_LOCK_ORDER, (order_id,))
        active = await conn.execute(_ACTIVE_CHECKOUT, (order_id, _ACTIVE_STATES))
        found = await locked.fetchone()
        if found is None:
            raise OrderNotFound(order_id)
        status = found[0]
        if status == "PAID":
            raise OrderAlreadyPaid(order_id)

        checkout = _checkout(await active.fetchall())
        started = checkout is None
        writes: list[Statement] = []
        if checkout is None:
            checkout, writes = _start(order_id, status, key)
        body = checkout.model_dump(mode="json")

        if key is not None:
            # Last, so that the statement's result is its RETURNING.
            writes.append(
                (
                    _STORE_KEY,
                    (key, order_id, checkout.checkout_id, ACCEPTED, Jsonb(body), datetime.now(UTC)),
                )
            )
        if writes:
            # The checkout, its step, its outbox row and the key: one statement.
            written = await conn.execute(*as_one(writes))
            if key is not None and await written.fetchone() is None:
                raise _Raced()
        # COMMIT as a statement of the pipeline: it travels with the writes and the
        # pipeline's closing sync. A failed commit (or a unique violation of the
        # inserts) raises as the block ends, like any statement.
        await conn.execute("COMMIT")

    if started:
        log.info("checkout started", checkout_id=str(checkout.checkout_id))
    return CheckoutOutcome(checkout.checkout_id, ACCEPTED, body, started=started)


def _checkout(rows: list[tuple[Any, ...]]) -> CheckoutOut | None:
    """The active checkout and its steps from `_ACTIVE_CHECKOUT`'s rows, or None."""
    if not rows:
        return None
    checkout_id, order_id, state, failure_reason, created_at, updated_at = rows[0][:6]
    return CheckoutOut(
        checkout_id=checkout_id,
        order_id=order_id,
        state=state,
        failure_reason=failure_reason,
        steps=[
            StepOut(name=name, status=status, at=at.astimezone(UTC), detail=detail)
            for name, status, at, detail in (row[6:] for row in rows)
            if name is not None
        ],
        created_at=created_at.astimezone(UTC),
        updated_at=updated_at.astimezone(UTC),
    )


def _start(
    order_id: uuid.UUID, order_status: str, key: str | None
) -> tuple[CheckoutOut, list[Statement]]:
    """A new checkout, and the writes that insert it, its first step and its
    CheckoutRequested outbox row."""
    now = datetime.now(UTC)
    checkout_id = uuid.uuid4()
    trace_id = current_trace_id()
    step = StepOut(
        name=REQUESTED_STEP,
        status="STARTED",
        at=now,
        detail=_request_detail(key, trace_id),
    )
    writes: list[Statement] = [
        (_INSERT_CHECKOUT, (checkout_id, order_id, "STARTED", None, trace_id, now, now)),
        (_INSERT_STEP, (checkout_id, step.name, step.status, step.at, step.detail)),
        outbox_row(
            CheckoutRequested(checkout_id=checkout_id, order_id=order_id, requested_at=now),
            correlation_id=checkout_id,
        ),
    ]
    if order_status != "PENDING":  # a FAILED order is pending again while it is retried
        writes.append((_REOPEN_ORDER, (now, order_id)))
    checkout = CheckoutOut(
        checkout_id=checkout_id,
        order_id=order_id,
        state="STARTED",
        failure_reason=None,
        steps=[step],
        created_at=now,
        updated_at=now,
    )
    return checkout, writes


def _request_detail(key: str | None, trace_id: str | None) -> str | None:
    """The first step's detail: what identifies the request (its key, its trace)."""
    parts = [f"Idempotency-Key: {key}"] if key is not None else []
    if trace_id is not None:
        parts.append(f"trace {trace_id}")
    return "; ".join(parts) or None
