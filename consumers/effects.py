"""The one shape every consumer's effect has: applied once, recorded with its inbox row.

`record_effect` checks that the event is about a checkout this system has PAID, claims
the message in the inbox, writes the effect's row and its timeline line: all of it one
SQL statement, so one round trip and, in autocommit, its own transaction. The writes
are data-modifying CTEs that insert only what the claim returned, and the claim only
happens for a PAID checkout: an `OrderPaid` about anything else (forged, or from
another system) writes nothing and is dead-lettered at once, and a message applied
before writes nothing either. A concurrent duplicate's claim waits on the first one's
inbox row until that commits, then finds it (skips) or, if it rolled back, claims it.

`call_once` is the whole handler of a consumer whose effect is a call to an external
service: one read says whether the message was applied already and whether its
checkout is PAID; then the service is called with the message id as idempotency key
(outside any transaction: no connection is held while the service answers), then the
result is recorded. A crash between the call and the commit repeats the call on
redelivery with the same key, which the service ignores.

These run once per message on the hot path, so they are plain psycopg statements. One
statement instead of a pipeline of BEGIN, check, claim, row, line and COMMIT saves
psycopg a send and a poll per statement, and PostgreSQL five statements per message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import psycopg
import structlog

from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.timeline.record import EFFECT_APPLIED, clip

log = structlog.get_logger()

Connection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Row:
    """An effect's row: an `INSERT ... SELECT <values> FROM claimed` and its parameters.

    `claimed` is the inbox claim's result: one row if this message is applied now, none
    otherwise, so the insert happens exactly when the claim does. The values are
    selected, not given to VALUES, so each parameter names its type (`%s::uuid`): a
    select list does not take its types from the target columns.
    """

    sql: str
    params: tuple[Any, ...]


_CHECK = "SELECT (SELECT state FROM checkouts WHERE checkout_id = %s AND order_id = %s), {seen}"
"""Before a remote call: the checkout's state (NULL if it is not there) and whether the
message was applied already."""

_RECORD = """
WITH paid AS (
    SELECT state FROM checkouts WHERE checkout_id = %s::uuid AND order_id = %s::uuid
), claimed AS (
    {claim}
), effect AS (
    {effect}
), line AS (
    INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, message_id,
        message_type, duration_ms, detail)
    SELECT %s::uuid, %s::uuid, %s::timestamptz, %s::varchar, %s::varchar, %s::uuid,
        %s::varchar, %s::float8, %s::text
    FROM claimed
)
SELECT (SELECT state FROM paid), EXISTS (SELECT 1 FROM claimed)
"""
_CLAIM_IF_PAID = "SELECT %s::varchar, %s::uuid, %s::timestamptz FROM paid WHERE paid.state = 'PAID'"


# Composed at first use rather than at import, from the inbox's fragments as they are
# then (a fault test switches the inbox off by replacing them before any message).
@cache
def _record_sql(effect: str) -> str:
    return _RECORD.format(claim=inbox.CLAIM.format(rows=_CLAIM_IF_PAID), effect=effect)


@cache
def _check_sql() -> str:
    return _CHECK.format(seen=inbox.SEEN)


def _not_paid(event: OrderPaid, state: str | None) -> PermanentFailure:
    if state is None:
        return PermanentFailure(
            f"no checkout {event.checkout_id} of order {event.order_id}: "
            "an OrderPaid about something this system does not have"
        )
    return PermanentFailure(
        f"checkout {event.checkout_id} of order {event.order_id} is {state}, not PAID"
    )


async def record_effect(
    uow: UnitOfWork,
    *,
    consumer: str,
    event: OrderPaid,
    delivery: Delivery,
    row: Row,
    detail: str,
    duration_ms: float | None = None,
) -> bool:
    """Check, claim, write `row` and the timeline line at once; False (nothing written) if
    the message was applied already. PermanentFailure (nothing written) unless the
    event's checkout, of the event's order, is PAID."""
    now = datetime.now(UTC)
    params = (
        *(event.checkout_id, event.order_id, consumer, delivery.message_id, now),  # claim
        *row.params,
        *(event.checkout_id, event.order_id, now, consumer, EFFECT_APPLIED),  # line
        *(delivery.message_id, event.message_type, duration_ms, clip(detail)),
    )
    async with uow.autocommit() as conn:
        cursor = await conn.execute(_record_sql(row.sql), params)
        found = await cursor.fetchone()
    state, claimed = found if found is not None else (None, False)
    if state != "PAID":
        raise _not_paid(event, state)
    if not claimed:
        log.info("duplicate message skipped")
    return bool(claimed)


async def call_once(
    uow: UnitOfWork,
    *,
    consumer: str,
    event: OrderPaid,
    delivery: Delivery,
    call: Callable[[str], Awaitable[Any]],
    row: Callable[[Any], Row],
    detail: Callable[[Any], str],
) -> Handled:
    """Call the service (`call(idempotency_key)`) once per message, then record its result."""
    structlog.contextvars.bind_contextvars(order_id=str(event.order_id))
    async with uow.autocommit() as conn:
        cursor = await conn.execute(
            _check_sql(), (event.checkout_id, event.order_id, consumer, delivery.message_id)
        )
        found = await cursor.fetchone()
    state, seen = found if found is not None else (None, False)
    if seen:
        log.info("duplicate message skipped")
        return Handled.DUPLICATE
    if state != "PAID":
        raise _not_paid(event, state)
    started = time.perf_counter()
    result = await call(str(delivery.message_id))
    elapsed_ms = (time.perf_counter() - started) * 1000
    applied = await record_effect(
        uow,
        consumer=consumer,
        event=event,
        delivery=delivery,
        row=row(result),
        detail=detail(result),
        duration_ms=elapsed_ms,
    )
    if not applied:
        return Handled.DUPLICATE
    log.info("effect applied", detail=detail(result))
    return Handled.DONE
