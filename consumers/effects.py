"""The one shape every consumer's effect has: applied once, recorded with its inbox row.

`record_effect` claims the message in the inbox, writes the effect's row and its
timeline line, all in the caller's transaction. Before anything is done for an event,
`ensure_paid` checks that it is about a checkout this system has PAID: an `OrderPaid`
about anything else (forged, or from another system) is dead-lettered at once, and
no e-mail is sent and nothing is produced for it. `call_once` is the whole handler of a
consumer whose effect is a call to an external service: skip a message already
applied, call the service with the message id as idempotency key (outside any
transaction: no connection is held while the service answers), then record. A crash
between the call and the commit repeats the call on redelivery with the same key,
which the service ignores.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Executable

from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.timeline.record import add_event

log = structlog.get_logger()


_PAID = text(
    "SELECT c.state FROM checkouts c WHERE c.checkout_id = :checkout_id AND c.order_id = :order_id"
)


async def ensure_paid(session: AsyncSession, event: OrderPaid) -> None:
    """PermanentFailure unless the event's checkout, of the event's order, is PAID here."""
    state = (
        await session.execute(_PAID, {"checkout_id": event.checkout_id, "order_id": event.order_id})
    ).scalar_one_or_none()
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
    session: AsyncSession,
    *,
    consumer: str,
    event: OrderPaid,
    delivery: Delivery,
    row: Executable,
    detail: str,
    duration_ms: float | None = None,
    verify: bool = True,
) -> bool:
    """Claim, write `row` and the timeline line; False (nothing written) if already applied.

    `verify`: check the event with `ensure_paid` first (off when the caller did already).
    """
    if not await inbox.claim(session, consumer, delivery.message_id):
        log.info("duplicate message skipped")
        return False
    if verify:
        await ensure_paid(session, event)
    await session.execute(row)
    add_event(
        session,
        checkout_id=event.checkout_id,
        order_id=event.order_id,
        source=consumer,
        kind="effect.applied",
        message_id=delivery.message_id,
        message_type=event.message_type,
        duration_ms=duration_ms,
        detail=detail,
    )
    return True


async def call_once(
    uow: UnitOfWork,
    *,
    consumer: str,
    event: OrderPaid,
    delivery: Delivery,
    call: Callable[[str], Awaitable[Any]],
    row: Callable[[Any], Executable],
    detail: Callable[[Any], str],
) -> Handled:
    """Call the service (`call(idempotency_key)`) once per message, then record its result."""
    structlog.contextvars.bind_contextvars(order_id=str(event.order_id))
    async with uow() as session:
        if await inbox.seen(session, consumer, delivery.message_id):
            log.info("duplicate message skipped")
            return Handled.DUPLICATE
        await ensure_paid(session, event)
    started = time.perf_counter()
    result = await call(str(delivery.message_id))
    elapsed_ms = (time.perf_counter() - started) * 1000
    async with uow() as session:
        applied = await record_effect(
            session,
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
        await session.commit()
    log.info("effect applied", detail=detail(result))
    return Handled.DONE
