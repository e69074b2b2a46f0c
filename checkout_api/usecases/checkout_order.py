"""Check out an order: the order change, the checkout and its outbox message in one transaction.

The checkout saga's first transition (STARTED to PAYMENT_PENDING: record the payment
and command its charge) is applied here, in the checkout's own statement, as the pure
state machine decides it (`saga.state_machine.decide`): no broker hop stands between
the request and the charge. The checkout is written PAYMENT_PENDING with both its
steps (the request, then `payment.requested`), the payment PENDING, `ChargePayment`
in the outbox and the payment deadline (`CHECKOUT_PAYMENT_DEADLINE` from now) in
`deadlines`, with its timeline line.

Concurrency, in the order the transaction meets it:

1. One statement (`_START`) looks the Idempotency-Key up: one already stored answers at
   once with the first response, even if the order has been paid since; stored for
   another order, the request is refused.
2. Otherwise the same statement locks the order (`FOR UPDATE` serialises every checkout
   of it), reads its active checkout, and inserts the new checkout, its steps, its
   payment, its outbox row and its key only if the order is not PAID and has none
   active. With an active checkout instead, the key is stored with that one's response
   (a second statement).
3. The partial unique index checkouts_one_active_per_order is the guarantee; the lock
   only makes violating it rare. The statement reads the active checkout on the
   snapshot it started with, so one committed while it waited for the lock is missed and
   the insert violates the index; that, or a concurrent request that stored the same
   Idempotency-Key first (the key's primary key, or ON CONFLICT DO NOTHING storing
   nothing for an active checkout), makes the attempt run again, which then finds the
   winner's checkout or key.

Every checkout request runs this, so it is plain SQL on a pooled psycopg connection in
autocommit: a checkout started, with a key or without, is one statement and one round
trip, the statement its own transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb
from sqlalchemy.exc import IntegrityError

from checkout_api.schemas.checkouts import CheckoutOut, StepOut
from checkout_api.usecases.errors import (
    IdempotencyKeyReused,
    OrderAlreadyPaid,
    OrderCancelled,
    OrderNotFound,
)
from checkout_api.usecases.idempotency import ACCEPTED, store_first_response
from contracts import ChargePayment
from infra.db.models import ACTIVE_CHECKOUT_STATES
from infra.db.session import UnitOfWork
from infra.messaging.outbox import outbox_envelope
from infra.tracing import current_trace_id
from saga.inputs import CheckoutRequested
from saga.state_machine import (
    PAYMENT_DEADLINE,
    CheckoutState,
    RequestPayment,
    SetDeadline,
    Transition,
    decide,
)

log = structlog.get_logger(__name__)

REQUESTED_STEP = "checkout.requested"
_ATTEMPTS = 3

_START = """
WITH stored AS (
    SELECT order_id, checkout_id, status_code, response FROM idempotency_keys
    WHERE key = %(key)s
), locked AS (
    SELECT status, amount, currency FROM orders
    WHERE order_id = %(order)s AND NOT EXISTS (SELECT 1 FROM stored) FOR UPDATE
), cancelling AS (
    SELECT 1 FROM cancellations
    WHERE order_id = %(order)s AND state NOT IN ('CANCELLED', 'REJECTED')
), active AS (
    SELECT c.checkout_id, c.order_id, c.state, c.failure_reason, c.created_at, c.updated_at,
        s.name, s.status, s.at, s.detail, s.id AS step
    FROM checkouts c LEFT OUTER JOIN checkout_steps s ON s.checkout_id = c.checkout_id
    WHERE c.order_id = %(order)s AND c.state = ANY(%(active)s)
), started AS (
    INSERT INTO checkouts (checkout_id, order_id, state, failure_reason, trace_id,
        created_at, updated_at)
    SELECT %(checkout)s, %(order)s, %(state)s::varchar, NULL, %(trace)s::varchar, %(now)s,
        %(now)s
    FROM locked WHERE locked.status NOT IN ('PAID', 'CANCELLED')
        AND NOT EXISTS (SELECT 1 FROM active) AND NOT EXISTS (SELECT 1 FROM cancelling)
    RETURNING checkout_id
), step AS (
    INSERT INTO checkout_steps (checkout_id, name, status, at, detail)
    SELECT checkout_id, s.name, s.status, %(now)s, s.detail
    FROM started, (VALUES (1, %(step)s::varchar, 'STARTED'::varchar, %(detail)s::text),
        (2, %(next_step)s::varchar, %(state)s::varchar, %(next_detail)s::text))
        AS s (n, name, status, detail)
    ORDER BY s.n
), payment AS (
    INSERT INTO payments (payment_id, checkout_id, order_id, amount, currency, status,
        created_at, updated_at)
    SELECT %(payment)s, checkout_id, %(order)s, locked.amount, locked.currency, 'PENDING',
        %(now)s, %(now)s
    FROM started, locked
), message AS (
    INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id,
        headers, body, created_at)
    SELECT %(message_id)s, %(exchange)s::varchar, %(routing_key)s::varchar,
        %(message_type)s::varchar, checkout_id, %(headers)s,
        json_build_object('checkout_id', checkout_id, 'order_id', %(order)s::uuid,
            'payment_id', %(payment)s::uuid, 'amount', locked.amount::text,
            'currency', locked.currency)::text,
        %(now)s
    FROM started, locked
), deadline AS (
    INSERT INTO deadlines (deadline_id, saga, saga_id, kind, due_at, attempts, created_at)
    SELECT %(deadline)s, 'checkout', checkout_id, %(deadline_kind)s, %(due)s, 0, %(now)s
    FROM started
), deadline_set AS (
    INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, detail)
    SELECT checkout_id, %(order)s, %(now)s, 'api', 'deadline.set', %(deadline_detail)s
    FROM started
), reopened AS (
    UPDATE orders SET status = 'PENDING', updated_at = %(now)s
    WHERE order_id = %(order)s AND status <> 'PENDING' AND EXISTS (SELECT 1 FROM started)
), key_stored AS (
    INSERT INTO idempotency_keys (key, order_id, checkout_id, status_code, response,
        created_at)
    SELECT %(key)s, %(order)s, checkout_id, %(status_code)s, %(response)s, %(now)s
    FROM started WHERE %(key)s::varchar IS NOT NULL
)
SELECT (SELECT CASE WHEN EXISTS (SELECT 1 FROM cancelling) THEN 'CANCELLED' ELSE status END
        FROM locked), EXISTS (SELECT 1 FROM started),
    a.checkout_id, a.order_id, a.state, a.failure_reason, a.created_at, a.updated_at,
    a.name, a.status, a.at, a.detail,
    k.order_id, k.checkout_id, k.status_code, k.response
FROM (VALUES (1)) AS one LEFT OUTER JOIN active a ON true LEFT OUTER JOIN stored k ON true
ORDER BY a.step
"""
"""Lock the order and start a checkout of it unless it is PAID, CANCELLED, being cancelled
or has an active checkout (an order being cancelled reads as CANCELLED).

The checkout starts as the saga's first transition leaves it: PAYMENT_PENDING with its
request step and the transition's, the payment PENDING and its `ChargePayment` in the
outbox. That command's body is built here from the locked order's own amount and
currency (`ChargePayment`'s fields; NUMERIC(12, 2) as text is the model's "19.99").

With an Idempotency-Key (`key`, else NULL) it is looked up first: stored, the statement
locks nothing and writes nothing, and answers with the stored response. Not stored, a
checkout it starts stores it with the checkout's response (`response`), in the same
statement; a key a concurrent request stores first makes that insert violate the key's
primary key, so the statement fails whole and the attempt runs again.

One row each: the order's status (NULL: no such order, or the key was stored), whether
the checkout was started, the active checkout with one of its steps (NULLs: none), then
the stored key's order, checkout, status code and response (NULLs: none). The active
checkout is read on the statement's snapshot, taken before the lock was granted, so it
misses a checkout committed while this statement waited for the lock: the insert then
violates checkouts_one_active_per_order, and the attempt runs again."""
_ACTIVE_STATES = list(ACTIVE_CHECKOUT_STATES)

_STORE_KEY = (
    "INSERT INTO idempotency_keys (key, order_id, checkout_id, status_code, response, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING key"
)
"""Store a key's first response when it is the active checkout's (`_START` stores it with a
checkout it starts); returns no row if another request stored it first."""


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
    uow: UnitOfWork,
    order_id: uuid.UUID,
    idempotency_key: str | None = None,
    *,
    payment_deadline: float,
) -> CheckoutOutcome:
    """Start a checkout of the order, or return the active one (202 either way).

    `payment_deadline`: seconds until the checkout, if still PAYMENT_PENDING, is
    reconciled (`CHECKOUT_PAYMENT_DEADLINE`).
    """
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await _attempt(uow, order_id, idempotency_key, payment_deadline)
        except (_Raced, IntegrityError, psycopg.IntegrityError):
            if attempt == _ATTEMPTS:
                raise
            log.info("checkout raced with a concurrent request; retrying", attempt=attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def _attempt(
    uow: UnitOfWork, order_id: uuid.UUID, key: str | None, payment_deadline: float
) -> CheckoutOutcome:
    # One statement in autocommit, its own transaction: one message each way. (A
    # transaction in a pipeline costs psycopg BEGIN with a sync of its own, the statement,
    # COMMIT and a closing sync: six writes, three reads and two wake-ups of the server
    # more.) Were the order PAID or its checkout active, it writes nothing; were it to
    # fail, nothing is written either.
    new, body, params = _new_checkout(order_id, key, payment_deadline)
    async with uow.autocommit() as conn:
        rows = await (await conn.execute(_START, params)).fetchall()
        stored_order, stored_checkout, stored_status, response = rows[0][12:16]
        if stored_order is not None:
            if stored_order != order_id:
                raise IdempotencyKeyReused()
            # JSONB does not keep key order; the model restores the document's.
            body = CheckoutOut.model_validate(response).model_dump(mode="json")
            return CheckoutOutcome(stored_checkout, stored_status, body, started=False)
        checkout, started = _started(new, rows)
        if not started:
            body = checkout.model_dump(mode="json")
            # The active checkout answers this key from now on. Another request that
            # stored the key first (for this order or another) wins: ask again.
            if key is not None and not await store_first_response(
                conn, _STORE_KEY, key, order_id, checkout.checkout_id, body
            ):
                raise _Raced()
    if started:
        log.info("checkout started", checkout_id=str(checkout.checkout_id))
    return CheckoutOutcome(checkout.checkout_id, ACCEPTED, body, started=started)


def _started(new: CheckoutOut, rows: list[tuple[Any, ...]]) -> tuple[CheckoutOut, bool]:
    """`_START`'s answer: the checkout it started (`new`) or the active one, and whether it
    started one; an order missing, PAID or CANCELLED raises."""
    status, started = rows[0][:2]
    if status is None:
        raise OrderNotFound(new.order_id)
    if status == "PAID":
        raise OrderAlreadyPaid(new.order_id)
    if status == "CANCELLED":
        raise OrderCancelled(new.order_id)
    return (new, True) if started else (_checkout(rows), False)


def _checkout(rows: list[tuple[Any, ...]]) -> CheckoutOut:
    """The active checkout and its steps from `_START`'s rows."""
    checkout_id, order_id, state, failure_reason, created_at, updated_at = rows[0][2:8]
    if checkout_id is None:
        # Not PAID, no checkout started and none active: only a row vanishing between
        # the lock and the read could do this. Run the attempt again.
        raise _Raced()
    return CheckoutOut(
        checkout_id=checkout_id,
        order_id=order_id,
        state=state,
        failure_reason=failure_reason,
        steps=[
            StepOut(name=name, status=status, at=at.astimezone(UTC), detail=detail)
            for name, status, at, detail in (row[8:12] for row in rows)
            if name is not None
        ],
        created_at=created_at.astimezone(UTC),
        updated_at=updated_at.astimezone(UTC),
    )


def first_transition(checkout_id: uuid.UUID) -> Transition:
    """The saga's answer to a new checkout's request, as `_START` applies it.

    The statement knows how to apply exactly these effects, the payment's request and its
    deadline (the configured one); a state machine that answered otherwise would be
    applied wrongly, so it is refused here.
    """
    transition = decide(CheckoutState.STARTED, CheckoutRequested(checkout_id))
    if transition.effects != (RequestPayment(), SetDeadline(PAYMENT_DEADLINE)):
        raise AssertionError(f"the checkout statement cannot apply {transition.effects!r}")
    return transition


def _new_checkout(
    order_id: uuid.UUID, key: str | None, payment_deadline: float
) -> tuple[CheckoutOut, dict[str, Any], dict[str, Any]]:
    """The checkout `_START` inserts if it may, its response's body, and the statement's
    parameters: the checkout after the saga's first transition, its two steps, its
    payment, its ChargePayment outbox row and the key's row with the body."""
    now = datetime.now(UTC)
    checkout_id = uuid.uuid4()
    trace_id = current_trace_id()
    transition = first_transition(checkout_id)
    due = now + timedelta(seconds=payment_deadline)
    step = StepOut(
        name=REQUESTED_STEP,
        status=str(CheckoutState.STARTED),
        at=now,
        detail=request_detail(key, trace_id),
    )
    moved = StepOut(
        name=transition.step.name,
        status=str(transition.step.status),
        at=now,
        detail=transition.step.detail,
    )
    message = outbox_envelope(ChargePayment, correlation_id=checkout_id)
    params = {
        "order": order_id,
        "active": _ACTIVE_STATES,
        "checkout": checkout_id,
        "state": str(transition.state),
        "trace": trace_id,
        "now": now,
        "step": step.name,
        "detail": step.detail,
        "next_step": moved.name,
        "next_detail": moved.detail,
        "payment": uuid.uuid4(),
        "message_id": message.message_id,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_type": message.message_type,
        "headers": message.headers,
        "deadline": uuid.uuid4(),
        "deadline_kind": PAYMENT_DEADLINE,
        "due": due,
        "deadline_detail": f"{PAYMENT_DEADLINE} deadline due at {due:%Y-%m-%dT%H:%M:%S%z}",
    }
    checkout = CheckoutOut.model_validate(
        {
            "checkout_id": checkout_id,
            "order_id": order_id,
            "state": str(transition.state),
            "failure_reason": None,
            "steps": [step, moved],
            "created_at": now,
            "updated_at": now,
        }
    )
    body = checkout.model_dump(mode="json")
    params["key"] = key
    params["status_code"] = ACCEPTED
    params["response"] = Jsonb(body) if key is not None else None
    return checkout, body, params


def request_detail(key: str | None, trace_id: str | None) -> str | None:
    """The first step's detail: what identifies the request (its key, its trace).

    A cancellation's first step says the same of its request (`cancel_order`)."""
    parts = [f"Idempotency-Key: {key}"] if key is not None else []
    if trace_id is not None:
        parts.append(f"trace {trace_id}")
    return "; ".join(parts) or None
