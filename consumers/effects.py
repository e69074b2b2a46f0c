"""The one shape every consumer's effect has: applied once, recorded with its inbox row.

`record_effect` claims the message in the inbox, writes the effect's row and its
timeline line, all in the caller's transaction. `call_once` is the whole handler of a
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
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Executable

from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.timeline.record import add_event

log = structlog.get_logger()


async def record_effect(
    session: AsyncSession,
    *,
    consumer: str,
    event: OrderPaid,
    delivery: Delivery,
    row: Executable,
    detail: str,
    duration_ms: float | None = None,
) -> bool:
    """Claim, write `row` and the timeline line; False (nothing written) if already applied."""
    if not await inbox.claim(session, consumer, delivery.message_id):
        log.info("duplicate message skipped")
        return False
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
        )
        if not applied:
            return Handled.DUPLICATE
        await session.commit()
    log.info("effect applied", detail=detail(result))
    return Handled.DONE
