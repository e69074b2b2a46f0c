"""The one shape every consumer's effect has: applied once, recorded with its inbox row.

`record_effect` claims the message in the inbox, writes the effect's row and its
timeline line, and commits them together (the caller opens the transaction). Before
anything is done for an event, `ensure_paid` checks that it is about a checkout this
system has PAID: an `OrderPaid` about anything else (forged, or from another system)
is dead-lettered at once, and no e-mail is sent and nothing is produced for it.
`call_once` is the whole handler of a consumer whose effect is a call to an external
service: skip a message already applied, call the service with the message id as
idempotency key (outside any transaction: no connection is held while the service
answers), then record. A crash between the call and the commit repeats the call on
redelivery with the same key, which the service ignores.

These run once per message on the hot path, so they are plain statements on the
transaction's psycopg connection (`UnitOfWork.transaction`), not ORM work: the effect's
row and its timeline line are written by one INSERT each, in the inbox row's transaction.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.timeline.record import EFFECT_APPLIED, INSERT_EVENT, clip

log = structlog.get_logger()


_PAID = "SELECT c.state FROM checkouts c WHERE c.checkout_id = %s AND c.order_id = %s"

Connection = psycopg.AsyncConnection[Any]
Statement = tuple[str, tuple[Any, ...]]
"""An effect's row: SQL with `%s` placeholders and its parameters."""


async def ensure_paid(conn: Connection, event: OrderPaid) -> None:
    """PermanentFailure unless the event's checkout, of the event's order, is PAID here."""
    await _check_paid(await _ask_paid(conn, event), event)


async def _ask_paid(conn: Connection, event: OrderPaid) -> psycopg.AsyncCursor[Any]:
    """Send `ensure_paid`'s query; in a pipeline it travels with the next statements."""
    return await conn.execute(_PAID, (event.checkout_id, event.order_id))


async def _check_paid(cursor: psycopg.AsyncCursor[Any], event: OrderPaid) -> None:
    found = await cursor.fetchone()
    state = found[0] if found is not None else None
    if state is None:
        raise PermanentFailure(
            f"no checkout {event.checkout_id} of order {event.order_id}: "
            "an OrderPaid about something this system does not have"
        )
    if state != "PAID":
        raise PermanentFailure(
            f"checkout {event.checkout_id} of order {event.order_id} is {state}, not PAID"
        )


async def record_effect(
    conn: Connection,
    *,
    consumer: str,
    event: OrderPaid,
    delivery: Delivery,
    row: Statement,
    detail: str,
    duration_ms: float | None = None,
    verify: bool = True,
) -> bool:
    """Claim, write `row` and the timeline line, and commit; False (nothing written) if
    already applied.

    `verify`: check the event with `ensure_paid` first (off when the caller did already).
    """
    # Pipelined: BEGIN, the check and the claim travel together, then the effect's row,
    # its timeline line and the COMMIT. The check only reads, so asking it before the
    # claim changes nothing.
    async with conn.pipeline():
        paid = await _ask_paid(conn, event) if verify else None
        if not await inbox.claim(conn, consumer, delivery.message_id):
            log.info("duplicate message skipped")
            return False
        if paid is not None:
            await _check_paid(paid, event)
        await conn.execute(*row)
        await conn.execute(
            INSERT_EVENT,
            (
                event.checkout_id,
                event.order_id,
                datetime.now(UTC),
                consumer,
                EFFECT_APPLIED,
                delivery.message_id,
                event.message_type,
                duration_ms,
                clip(detail),
            ),
        )
        # COMMIT as a statement of the pipeline: it travels with the rows and the
        # pipeline's closing sync; a failed commit raises as the block ends.
        await conn.execute("COMMIT")
    return True


async def call_once(
    uow: UnitOfWork,
    *,
    consumer: str,
    event: OrderPaid,
    delivery: Delivery,
    call: Callable[[str], Awaitable[Any]],
    row: Callable[[Any], Statement],
    detail: Callable[[Any], str],
) -> Handled:
    """Call the service (`call(idempotency_key)`) once per message, then record its result."""
    structlog.contextvars.bind_contextvars(order_id=str(event.order_id))
    async with uow.reads() as conn:  # only reads: no transaction around them
        if await inbox.seen(conn, consumer, delivery.message_id):
            log.info("duplicate message skipped")
            return Handled.DUPLICATE
        await ensure_paid(conn, event)
    started = time.perf_counter()
    result = await call(str(delivery.message_id))
    elapsed_ms = (time.perf_counter() - started) * 1000
    async with uow.transaction() as conn:
        applied = await record_effect(
            conn,
            consumer=consumer,
            event=event,
            delivery=delivery,
            row=row(result),
            detail=detail(result),
            duration_ms=elapsed_ms,
            verify=False,
        )
        if not applied:
            return Handled.DUPLICATE
    log.info("effect applied", detail=detail(result))
    return Handled.DONE
