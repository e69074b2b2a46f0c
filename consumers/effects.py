"""The one shape every consumer's effect has: applied once, recorded with its inbox row.

`Effects.record` checks that the event is about a checkout this system has PAID, claims
the message in the inbox, writes the effect's row and its timeline line: all of it one
SQL statement, so one round trip and, in autocommit, its own transaction. The writes
are data-modifying CTEs that insert only what the claim returned, and the claim only
happens for a PAID checkout: an `OrderPaid` about anything else (forged, or from
another system) writes nothing and is dead-lettered at once, and a message applied
before writes nothing either. A concurrent duplicate's claim waits on the first one's
inbox row until that commits, then finds it (skips) or, if it rolled back, claims it.

`Effects.call_once` is the whole handler of a consumer whose effect is a call to an
external service: one read says whether the message was applied already and whether
its checkout is PAID; then the service is called with the message id as idempotency
key (outside any transaction: no connection is held while the service answers), then
the result is recorded. A crash between the call and the commit repeats the call on
redelivery with the same key, which the service ignores.

These run once per message on the hot path, so they are plain psycopg statements, and
the messages in hand at one moment share them (`infra.db.batching`): the records of
several messages are one statement (each message's CTEs side by side), and so are
their checks. A batch that fails is run again message by message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import structlog

from contracts import OrderPaid
from infra.db.batching import Batcher
from infra.db.session import UnitOfWork
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.timeline.record import EFFECT_APPLIED, clip

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Row:
    """An effect's row: an `INSERT ... SELECT <values> FROM {claimed}` and its parameters.

    `{claimed}` names the inbox claim's result: one row if this message is applied now,
    none otherwise, so the insert happens exactly when the claim does. The values are
    selected, not given to VALUES, so each parameter names its type (`%s::uuid`): a
    select list does not take its types from the target columns.
    """

    sql: str
    params: tuple[Any, ...]


_CHECK = (
    "SELECT {i}, (SELECT state FROM checkouts WHERE checkout_id = %s AND order_id = %s), {seen}"
)
"""Before a remote call: the checkout's state (NULL if it is not there) and whether the
message was applied already."""

_RECORD = """
paid{i} AS (
    SELECT state FROM checkouts WHERE checkout_id = %s::uuid AND order_id = %s::uuid
), claimed{i} AS (
    {claim}
), effect{i} AS (
    {effect}
), line{i} AS (
    INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, message_id,
        message_type, duration_ms, detail)
    SELECT %s::uuid, %s::uuid, %s::timestamptz, %s::varchar, %s::varchar, %s::uuid,
        %s::varchar, %s::float8, %s::text
    FROM claimed{i}
)"""
_RECORD_RESULT = "SELECT {i}, (SELECT state FROM paid{i}), EXISTS (SELECT 1 FROM claimed{i})"
_CLAIM_IF_PAID = (
    "SELECT %s::varchar, %s::uuid, %s::timestamptz FROM paid{i} WHERE paid{i}.state = 'PAID'"
)


# Composed at first use rather than at import, from the inbox's fragments as they are
# then (a fault test switches the inbox off by replacing them before any message).
@cache
def _record_sql(effect: str, n: int) -> str:
    """The records of `n` messages as one statement; a row (i, state, claimed) each."""
    parts = []
    for i in range(n):
        claim = inbox.CLAIM.format(rows=_CLAIM_IF_PAID.format(i=i))
        parts.append(_RECORD.format(i=i, claim=claim, effect=effect.format(claimed=f"claimed{i}")))
    results = " UNION ALL ".join(_RECORD_RESULT.format(i=i) for i in range(n))
    return "WITH " + ",".join(parts) + "\n" + results


@cache
def _check_sql(n: int) -> str:
    """The checks of `n` messages as one statement; a row (i, state, seen) each."""
    return " UNION ALL ".join(_CHECK.format(i=i, seen=inbox.SEEN) for i in range(n))


@dataclass(frozen=True, slots=True)
class _Record:
    event: OrderPaid
    delivery: Delivery
    row: Row
    detail: str
    duration_ms: float | None

    def params(self, consumer: str) -> tuple[Any, ...]:
        event, message_id, now = self.event, self.delivery.message_id, datetime.now(UTC)
        return (
            *(event.checkout_id, event.order_id),  # paid
            *(consumer, message_id, now),  # claim
            *self.row.params,
            *(event.checkout_id, event.order_id, now, consumer, EFFECT_APPLIED),  # line
            *(message_id, event.message_type, self.duration_ms, clip(self.detail)),
        )


Found = tuple[str | None, bool]
"""The checkout's state (None: no such checkout of that order), and whether the message
was claimed now (a record) or had been applied before (a check)."""


def _by_index(rows: Sequence[tuple[Any, ...]], n: int) -> list[Found]:
    found: list[Found] = [(None, False)] * n
    for i, state, flag in rows:
        found[i] = (state, bool(flag))
    return found


class Effects:
    """Checks and records the effects of one consumer's messages."""

    def __init__(self, uow: UnitOfWork, consumer: str) -> None:
        self._uow = uow
        self.consumer = consumer

        self._records: Batcher[_Record, Found] = Batcher(
            f"{consumer} records",
            self._record_all,
            key=lambda record: record.delivery.message_id,
        )
        self._checks: Batcher[tuple[OrderPaid, Delivery], Found] = Batcher(
            f"{consumer} checks", self._check_all
        )

    async def _record_all(self, records: Sequence[_Record]) -> list[Found]:
        effect = records[0].row.sql
        if any(record.row.sql != effect for record in records):
            raise ValueError("one batch of records must share its effect's statement")
        params = tuple(param for record in records for param in record.params(self.consumer))
        async with self._uow.autocommit() as conn:
            cursor = await conn.execute(_record_sql(effect, len(records)), params)
            return _by_index(await cursor.fetchall(), len(records))

    async def _check_all(self, checks: Sequence[tuple[OrderPaid, Delivery]]) -> list[Found]:
        params = tuple(
            param
            for event, delivery in checks
            for param in (event.checkout_id, event.order_id, self.consumer, delivery.message_id)
        )
        async with self._uow.autocommit() as conn:
            cursor = await conn.execute(_check_sql(len(checks)), params)
            return _by_index(await cursor.fetchall(), len(checks))

    async def record(
        self,
        event: OrderPaid,
        delivery: Delivery,
        *,
        row: Row,
        detail: str,
        duration_ms: float | None = None,
    ) -> bool:
        """Check, claim, write `row` and the timeline line at once; False (nothing
        written) if the message was applied already. PermanentFailure (nothing written)
        unless the event's checkout, of the event's order, is PAID."""
        state, claimed = await self._records.submit(
            _Record(event, delivery, row, detail, duration_ms)
        )
        if state != "PAID":
            raise _not_paid(event, state)
        if not claimed:
            log.info("duplicate message skipped")
        return claimed

    async def call_once(
        self,
        event: OrderPaid,
        delivery: Delivery,
        *,
        call: Callable[[str], Awaitable[Any]],
        row: Callable[[Any], Row],
        detail: Callable[[Any], str],
    ) -> Handled:
        """Call the service (`call(idempotency_key)`) once per message, then record it."""
        structlog.contextvars.bind_contextvars(order_id=str(event.order_id))
        state, seen = await self._checks.submit((event, delivery))
        if seen:
            log.info("duplicate message skipped")
            return Handled.DUPLICATE
        if state != "PAID":
            raise _not_paid(event, state)
        started = time.perf_counter()
        result = await call(str(delivery.message_id))
        elapsed_ms = (time.perf_counter() - started) * 1000
        applied = await self.record(
            event, delivery, row=row(result), detail=detail(result), duration_ms=elapsed_ms
        )
        if not applied:
            return Handled.DUPLICATE
        log.info("effect applied", detail=detail(result))
        return Handled.DONE


def _not_paid(event: OrderPaid, state: str | None) -> PermanentFailure:
    if state is None:
        return PermanentFailure(
            f"no checkout {event.checkout_id} of order {event.order_id}: "
            "an OrderPaid about something this system does not have"
        )
    return PermanentFailure(
        f"checkout {event.checkout_id} of order {event.order_id} is {state}, not PAID"
    )
