"""The one shape every consumer's effect has: applied once, recorded with its inbox row.

`Effects.record` checks that the event is about something this system has in the state
the event says (its `Guard`: an `OrderPaid`'s checkout PAID, an `OrderCancelled`'s
order CANCELLED), claims the message in the inbox, writes the effect's row and its
timeline line: all of it one SQL statement, so one round trip and, in autocommit, its
own transaction. The writes are data-modifying CTEs that insert only what the claim
returned, and the claim only happens when the guard holds: an event about anything
else (forged, or from another system) writes nothing and is dead-lettered at once, and
a message applied before writes nothing either. A concurrent duplicate's claim waits
on the first one's inbox row until that commits, then finds it (skips) or, if it
rolled back, claims it. An effect may be nothing but its timeline line (`row=None`:
the production consumer's "cancelled meanwhile").

`Effects.call_once` is the whole handler of a consumer whose effect is a call to an
external service: one read says whether the message was applied already and whether
its guard holds; then the service is called with the message id as idempotency
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
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog

from contracts import OrderCancelled, OrderPaid
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


class _Event(Protocol):
    """What a recorded event has: its order, and its type's name."""

    message_type: ClassVar[str]

    @property
    def order_id(self) -> uuid.UUID: ...


E = TypeVar("E", bound=_Event)


@dataclass(frozen=True, slots=True)
class Guard(Generic[E]):
    """What an event must be about for its effect to apply, and where its line goes.

    `sql` selects one value, `state`, from the parameters `params(event)` gives (no
    row: the thing does not exist); the effect applies only if it is `required`.
    """

    sql: str
    required: str
    params: Callable[[E], tuple[Any, ...]]
    timeline: Callable[[E], tuple[uuid.UUID, uuid.UUID]]
    """(the saga id the line is filed under, the order id): the checkout for a
    payment's event, the cancellation for a cancellation's."""
    refusal: Callable[[E, str | None], str]


def _not_paid(event: OrderPaid, state: str | None) -> str:
    if state is None:
        return (
            f"no checkout {event.checkout_id} of order {event.order_id}: "
            "an OrderPaid about something this system does not have"
        )
    return f"checkout {event.checkout_id} of order {event.order_id} is {state}, not PAID"


def _not_cancelled(event: OrderCancelled, state: str | None) -> str:
    if state is None:
        return (
            f"no order {event.order_id}: an OrderCancelled about something this system "
            "does not have"
        )
    return f"order {event.order_id} is {state}, not CANCELLED"


PAID_CHECKOUT: Guard[OrderPaid] = Guard(
    sql="SELECT state FROM checkouts WHERE checkout_id = %s::uuid AND order_id = %s::uuid",
    required="PAID",
    params=lambda event: (event.checkout_id, event.order_id),
    timeline=lambda event: (event.checkout_id, event.order_id),
    refusal=_not_paid,
)
"""An `OrderPaid` applies to its checkout, of its order, once that is PAID."""

CANCELLED_ORDER: Guard[OrderCancelled] = Guard(
    # The order, not the cancellation: the order's status is what the cancellation's
    # final transition sets in the transaction that writes this event.
    sql="SELECT status AS state FROM orders WHERE order_id = %s::uuid",
    required="CANCELLED",
    params=lambda event: (event.order_id,),
    timeline=lambda event: (event.cancellation_id, event.order_id),
    refusal=_not_cancelled,
)
"""An `OrderCancelled` applies to its order once that is CANCELLED."""


_CHECK = "SELECT {i}, ({guard}), {seen}"
"""Before a remote call: the guard's state (NULL if there is no such thing) and whether
the message was applied already."""

_RECORD = """
subject{i} AS (
    {guard}
), claimed{i} AS (
    {claim}
),{effect} line{i} AS (
    INSERT INTO checkout_events (checkout_id, order_id, at, source, kind, message_id,
        message_type, duration_ms, detail)
    SELECT %s::uuid, %s::uuid, %s::timestamptz, %s::varchar, %s::varchar, %s::uuid,
        %s::varchar, %s::float8, %s::text
    FROM claimed{i}
)"""
_EFFECT = """ effect{i} AS (
    {sql}
),"""
_RECORD_RESULT = "SELECT {i}, (SELECT state FROM subject{i}), EXISTS (SELECT 1 FROM claimed{i})"
_CLAIM_IF = (
    "SELECT %s::varchar, %s::uuid, %s::timestamptz FROM subject{i}"
    " WHERE subject{i}.state = '{required}'"
)


# Composed at first use rather than at import, from the inbox's fragments as they are
# then (a fault test switches the inbox off by replacing them before any message).
@cache
def _record_sql(guard: str, required: str, effect: str | None, n: int) -> str:
    """The records of `n` messages as one statement; a row (i, state, claimed) each."""
    parts = []
    for i in range(n):
        claim = inbox.CLAIM.format(rows=_CLAIM_IF.format(i=i, required=required))
        sql = (
            "" if effect is None else _EFFECT.format(i=i, sql=effect.format(claimed=f"claimed{i}"))
        )
        parts.append(_RECORD.format(i=i, guard=guard, claim=claim, effect=sql))
    results = " UNION ALL ".join(_RECORD_RESULT.format(i=i) for i in range(n))
    return "WITH " + ",".join(parts) + "\n" + results


@cache
def _check_sql(guard: str, n: int) -> str:
    """The checks of `n` messages as one statement; a row (i, state, seen) each."""
    return " UNION ALL ".join(_CHECK.format(i=i, guard=guard, seen=inbox.SEEN) for i in range(n))


@dataclass(frozen=True, slots=True)
class _Record(Generic[E]):
    event: E
    delivery: Delivery
    row: Row | None
    kind: str
    detail: str
    duration_ms: float | None

    def params(self, consumer: str, guard: Guard[E]) -> tuple[Any, ...]:
        event, message_id, now = self.event, self.delivery.message_id, datetime.now(UTC)
        saga_id, order_id = guard.timeline(event)
        return (
            *guard.params(event),  # subject
            *(consumer, message_id, now),  # claim
            *(self.row.params if self.row is not None else ()),
            *(saga_id, order_id, now, consumer, self.kind),  # line
            *(message_id, event.message_type, self.duration_ms, clip(self.detail)),
        )


Found = tuple[str | None, bool]
"""The guard's state (None: no such thing), and whether the message was claimed now (a
record) or had been applied before (a check)."""


def _by_index(rows: Sequence[tuple[Any, ...]], n: int) -> list[Found]:
    found: list[Found] = [(None, False)] * n
    for i, state, flag in rows:
        found[i] = (state, bool(flag))
    return found


class Effects(Generic[E]):
    """Checks and records the effects of one consumer's messages of one kind."""

    def __init__(self, uow: UnitOfWork, consumer: str, guard: Guard[E]) -> None:
        self._uow = uow
        self.consumer = consumer
        self.guard = guard

        self._records: Batcher[_Record[E], Found] = Batcher(
            f"{consumer} records",
            self._record_all,
            key=lambda record: record.delivery.message_id,
        )
        self._checks: Batcher[tuple[E, Delivery], Found] = Batcher(
            f"{consumer} checks", self._check_all
        )

    async def _record_all(self, records: Sequence[_Record[E]]) -> list[Found]:
        # Records with different effects (a submission and a "cancelled meanwhile") are
        # different statements; each group is still one round trip.
        groups: dict[str | None, list[int]] = {}
        for index, record in enumerate(records):
            groups.setdefault(record.row.sql if record.row else None, []).append(index)
        found: list[Found] = [(None, False)] * len(records)
        guard = self.guard
        async with self._uow.autocommit() as conn:
            for effect, indexes in groups.items():
                params = tuple(
                    param
                    for index in indexes
                    for param in records[index].params(self.consumer, guard)
                )
                sql = _record_sql(guard.sql, guard.required, effect, len(indexes))
                cursor = await conn.execute(sql, params)
                for i, result in enumerate(_by_index(await cursor.fetchall(), len(indexes))):
                    found[indexes[i]] = result
        return found

    async def _check_all(self, checks: Sequence[tuple[E, Delivery]]) -> list[Found]:
        params = tuple(
            param
            for event, delivery in checks
            for param in (*self.guard.params(event), self.consumer, delivery.message_id)
        )
        async with self._uow.autocommit() as conn:
            cursor = await conn.execute(_check_sql(self.guard.sql, len(checks)), params)
            return _by_index(await cursor.fetchall(), len(checks))

    async def record(
        self,
        event: E,
        delivery: Delivery,
        *,
        row: Row | None,
        detail: str,
        duration_ms: float | None = None,
        kind: str = EFFECT_APPLIED,
    ) -> bool:
        """Check, claim, write `row` and the timeline line at once; False (nothing
        written) if the message was applied already. PermanentFailure (nothing written)
        unless the event's guard holds."""
        state, claimed = await self._records.submit(
            _Record(event, delivery, row, kind, detail, duration_ms)
        )
        if state != self.guard.required:
            raise PermanentFailure(self.guard.refusal(event, state))
        if not claimed:
            log.info("duplicate message skipped")
        return claimed

    async def check(self, event: E, delivery: Delivery) -> bool:
        """Whether the message was applied already; PermanentFailure unless the guard
        holds. A cheap read before a remote call."""
        state, seen = await self._checks.submit((event, delivery))
        if seen:
            log.info("duplicate message skipped")
            return True
        if state != self.guard.required:
            raise PermanentFailure(self.guard.refusal(event, state))
        return False

    async def call_once(
        self,
        event: E,
        delivery: Delivery,
        *,
        call: Callable[[str], Awaitable[Any]],
        row: Callable[[Any], Row | None],
        detail: Callable[[Any], str],
        kind: Callable[[Any], str] = lambda _: EFFECT_APPLIED,
        checked: bool = False,
    ) -> Handled:
        """Call the service (`call(idempotency_key)`) once per message, then record it.

        `row`, `detail` and `kind` make the record from the call's result; `checked`
        says the caller has just run `check` itself (it needed to read more first).
        """
        structlog.contextvars.bind_contextvars(order_id=str(event.order_id))
        if not checked and await self.check(event, delivery):
            return Handled.DUPLICATE
        started = time.perf_counter()
        result = await call(str(delivery.message_id))
        elapsed_ms = (time.perf_counter() - started) * 1000
        applied = await self.record(
            event,
            delivery,
            row=row(result),
            detail=detail(result),
            duration_ms=elapsed_ms,
            kind=kind(result),
        )
        if not applied:
            return Handled.DUPLICATE
        log.info("effect applied", detail=detail(result))
        return Handled.DONE
