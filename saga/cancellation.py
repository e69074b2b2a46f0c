"""The cancellation saga's shell: apply one input to one cancellation, in the caller's transaction.

Every place a cancellation moves calls this with the transaction it already holds (the
production cancellation step, the refund step, the checkout's final transition):

1. lock the cancellation's order, then the cancellation (`FOR NO KEY UPDATE`: movers
   wait for each other, rows referring to them may still be inserted), in that order
   everywhere (the API and the checkout's final transition lock the order first too),
   so two movers of one cancellation never wait on each other crosswise;
2. claim the message in the inbox (a redelivered command finds its claim: skipped);
3. decide with the pure state machine (`saga.cancellation_state_machine`);
4. write the new state, its step, its effects and their outbox messages
   (`saga.cancellation_writes`).

The caller commits, then acks its message. A crash before the commit leaves nothing
behind and the message is redelivered; after it, the redelivery is a duplicate.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import structlog

from infra import metrics
from infra.messaging import inbox
from infra.messaging.failures import PermanentFailure
from saga.cancellation_state_machine import (
    CancellationInput,
    CancellationState,
    CheckoutEnded,
    Transition,
    decide,
)
from saga.cancellation_writes import Cancelling, Payment, RefundRow, transition_writes

log = structlog.get_logger()

_LOCK_ORDER = (
    "SELECT o.order_id FROM orders o JOIN cancellations c ON c.order_id = o.order_id"
    " WHERE c.cancellation_id = %s FOR NO KEY UPDATE OF o"
)
_LOAD = (
    "SELECT c.cancellation_id, c.order_id, c.reason, c.state,"
    " p.payment_id, p.checkout_id, p.provider_payment_id, p.amount, p.currency,"
    " r.refund_id, r.amount, r.currency"
    " FROM cancellations c"
    " LEFT JOIN payments p ON p.checkout_id = c.checkout_id"
    " LEFT JOIN refunds r ON r.cancellation_id = c.cancellation_id"
    " WHERE c.cancellation_id = %s FOR NO KEY UPDATE OF c"
)
"""The cancellation, locked, with the payment of its checkout and its refund if any."""
_CLAIM = inbox.CLAIM.format(rows="VALUES (%s, %s, %s)")
_WAITING = (
    "SELECT cancellation_id, checkout_id FROM cancellations"
    " WHERE checkout_id = ANY(%s::uuid[]) AND state = 'WAITING_FOR_CHECKOUT'"
)


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one input did (None transition: a duplicate, skipped)."""

    cancellation_id: uuid.UUID
    order_id: uuid.UUID
    previous: CancellationState
    transition: Transition | None


def _cancelling(row: tuple[Any, ...]) -> Cancelling:
    payment = None
    if row[4] is not None:
        payment = Payment(row[4], row[5], row[6], Decimal(row[7]), row[8])
    refund = None if row[9] is None else RefundRow(row[9], Decimal(row[10]), row[11])
    return Cancelling(row[0], row[1], row[2], row[3], payment, refund)


async def load(conn: psycopg.AsyncConnection[Any], cancellation_id: uuid.UUID) -> Cancelling:
    """Lock the cancellation's order, then the cancellation; PermanentFailure if none."""
    await conn.execute(_LOCK_ORDER, (cancellation_id,))
    row = await (await conn.execute(_LOAD, (cancellation_id,))).fetchone()
    if row is None:
        raise PermanentFailure(f"no cancellation {cancellation_id}")
    return _cancelling(row)


async def apply(
    conn: psycopg.AsyncConnection[Any],
    cancellation_id: uuid.UUID,
    message: CancellationInput,
    now: datetime,
    *,
    claim: tuple[str, uuid.UUID] | None,
) -> Applied:
    """Apply `message` to the cancellation in the caller's transaction (the caller commits).

    `claim`: (consumer, message_id) to claim in the inbox; None when the caller has
    claimed its own message already (the checkout's final transition).
    """
    cancelling = await load(conn, cancellation_id)
    previous = CancellationState(cancelling.state)
    if claim is not None:
        consumer, message_id = claim
        claimed = await (await conn.execute(_CLAIM, (consumer, message_id, now))).fetchone()
        if claimed is None:
            return Applied(cancellation_id, cancelling.order_id, previous, None)
    transition = decide(previous, message)
    for sql, params in transition_writes(transition, cancelling, now):
        await conn.execute(sql, params)
    return Applied(cancellation_id, cancelling.order_id, previous, transition)


async def checkouts_ended(
    conn: psycopg.AsyncConnection[Any], ended: Sequence[tuple[uuid.UUID, bool]], now: datetime
) -> list[Applied]:
    """The checkouts' final transitions meet the cancellations waiting for them, if any.

    `ended`: (checkout, paid) of each checkout that has just reached PAID or FAILED,
    in the checkouts' own transaction, after it has written their orders (so it holds
    the orders' locks: a cancel request committed before a lock was granted is seen
    here, one after it sees the checkout's end). FAILED: the order is cancelled
    without refund; PAID: its production order is cancelled, then it is refunded.
    One statement looks for all of them; most find none.
    """
    if not ended:
        return []
    paid = dict(ended)
    rows = await (await conn.execute(_WAITING, (list(paid),))).fetchall()
    moved = []
    for cancellation_id, checkout_id in sorted(rows):
        moved.append(
            await apply(
                conn, cancellation_id, CheckoutEnded(paid=paid[checkout_id]), now, claim=None
            )
        )
        log.info(
            "cancellation took over from its checkout",
            cancellation_id=str(cancellation_id),
            checkout_id=str(checkout_id),
            paid=paid[checkout_id],
        )
    return moved


def observe(applied: Applied) -> None:
    """Count and log an applied input, after its transaction committed."""
    transition = applied.transition
    if transition is None:
        log.info("duplicate message skipped", cancellation_id=str(applied.cancellation_id))
        return
    if transition.moved:
        metrics.CANCELLATION_TRANSITIONS.labels(applied.previous, transition.state).inc()
    log.info(
        "cancellation transition",
        cancellation_id=str(applied.cancellation_id),
        order_id=str(applied.order_id),
        state=str(transition.state),
        step=transition.step.name,
    )
