"""Recording the hops of a checkout that no other table keeps (`checkout_events`).

Cheap by design, since these run on the hot path: one INSERT per call, however many
events it carries (`INSERT ... SELECT FROM unnest(...)`), no RETURNING, no foreign
keys, no lock on the checkout's row.

Three ways in, by where the caller stands:

- in an SQLAlchemy transaction: `add_event(session, ...)` stages the row (no round
  trip; it is flushed with the caller's commit), or `await insert_events(session,
  events)` writes a batch at once. Either commits or rolls back with the caller's work.
- in a raw psycopg transaction (the relay): `await record_published(conn, rows)` for
  the outbox rows just confirmed, or `await insert_events(conn, events)`; a consumer's
  `effect.applied` line is written by the statement that applies its effect
  (`consumers.effects`).
- outside any transaction (the consumer shell settling a message, the payment step):
  `await write_events(uow, events)`: its own short transaction, and best effort: a
  failure is logged, never raised, so recording can never fail the message.

`at` defaults to now (UTC) at the call. `duration_ms` is what the hop took (a relay's
lag, a handler's run, an HTTP call). Sources are the part's short name: `api`,
`relay`, `saga`, `payment`, `invoice`, `email`, `production`, `dlq`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from infra.db.models import CheckoutEvent
from infra.db.session import UnitOfWork

log = structlog.get_logger()

# Kinds the timeline gives a meaning to (any other kind is shown as it is).
HTTP_REQUEST = "http.request"  # api: the checkout request (detail: key, trace id)
OUTBOX_PUBLISHED = "outbox.published"  # relay: duration_ms = lag from outbox insert
PAYMENT_ATTEMPT = "payment.attempt"  # payment: one call to the Payment Service
EFFECT_APPLIED = "effect.applied"  # a consumer applied the message (duration = handler)
MESSAGE_PROCESSED = "message.processed"  # the same, when the shell cannot tell more
DUPLICATE_SKIPPED = "duplicate.skipped"  # the inbox had it already
MESSAGE_RETRIED = "message.retried"  # failed, sent to a wait queue (detail: error, delay)
MESSAGE_DEAD_LETTERED = "message.dead_lettered"  # sent to <queue>.dlq (detail: error)
MESSAGE_REPLAYED = "message.replayed"  # a replayed copy arrived back (x-replay-count)

DETAIL_LIMIT = 2000

_COLUMNS = (
    "checkout_id",
    "order_id",
    "at",
    "source",
    "kind",
    "message_id",
    "message_type",
    "duration_ms",
    "detail",
)
INSERT_EVENTS = """
    INSERT INTO checkout_events
        (checkout_id, order_id, at, source, kind, message_id, message_type, duration_ms, detail)
    SELECT * FROM unnest(
        %(checkout_id)s::uuid[], %(order_id)s::uuid[], %(at)s::timestamptz[],
        %(source)s::varchar[], %(kind)s::varchar[], %(message_id)s::uuid[],
        %(message_type)s::varchar[], %(duration_ms)s::float8[], %(detail)s::text[]
    )
"""
"""One statement for any number of events: each column is bound as one array."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """One row of `checkout_events`, before it is written."""

    checkout_id: uuid.UUID
    source: str
    kind: str
    at: datetime = field(default_factory=now)
    order_id: uuid.UUID | None = None
    message_id: uuid.UUID | None = None
    message_type: str | None = None
    duration_ms: float | None = None
    detail: str | None = None


def _uuid(value: uuid.UUID | str | None) -> uuid.UUID | None:
    """A UUID, or None for a missing or malformed id (a poison message may carry one)."""
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def clip(detail: str | None) -> str | None:
    """`detail` cut to what the timeline keeps."""
    return detail[:DETAIL_LIMIT] if detail is not None else None


def event(
    *,
    checkout_id: uuid.UUID | str,
    source: str,
    kind: str,
    at: datetime | None = None,
    order_id: uuid.UUID | str | None = None,
    message_id: uuid.UUID | str | None = None,
    message_type: str | None = None,
    duration_ms: float | None = None,
    detail: str | None = None,
) -> Event:
    """An `Event` from loosely typed values (ids as strings are parsed)."""
    checkout = _uuid(checkout_id)
    if checkout is None:
        raise ValueError(f"checkout_id {checkout_id!r} is not a UUID")
    return Event(
        checkout_id=checkout,
        source=source,
        kind=kind,
        at=at or now(),
        order_id=_uuid(order_id),
        message_id=_uuid(message_id),
        message_type=message_type,
        duration_ms=duration_ms,
        detail=clip(detail),
    )


def add_event(
    session: AsyncSession,
    *,
    checkout_id: uuid.UUID,
    source: str,
    kind: str,
    at: datetime | None = None,
    order_id: uuid.UUID | None = None,
    message_id: uuid.UUID | None = None,
    message_type: str | None = None,
    duration_ms: float | None = None,
    detail: str | None = None,
) -> None:
    """Stage one event in the session's transaction; written with the caller's commit.

    No I/O here: the row is flushed with the caller's other rows when it commits
    (insertmanyvalues batches them), so a transition costs no extra round trip.
    """
    session.add(
        CheckoutEvent(
            checkout_id=checkout_id,
            order_id=order_id,
            at=at or now(),
            source=source,
            kind=kind,
            message_id=message_id,
            message_type=message_type,
            duration_ms=duration_ms,
            detail=clip(detail),
        )
    )


def _params(events: Sequence[Event]) -> dict[str, list[Any]]:
    return {column: [getattr(e, column) for e in events] for column in _COLUMNS}


async def insert_events(
    target: AsyncSession | AsyncConnection | psycopg.AsyncConnection[Any],
    events: Iterable[Event],
) -> None:
    """Write `events` now, in `target`'s transaction, with one statement.

    `target` is an SQLAlchemy session or connection, or a raw psycopg connection.
    """
    batch = list(events)
    if not batch:
        return
    params = _params(batch)
    if isinstance(target, psycopg.AsyncConnection):
        await target.execute(INSERT_EVENTS, params)
        return
    connection = await target.connection() if isinstance(target, AsyncSession) else target
    await connection.exec_driver_sql(INSERT_EVENTS, params)


def published_events(
    rows: Iterable[Mapping[str, Any]], *, at: datetime | None = None
) -> list[Event]:
    """The `outbox.published` events of outbox rows the broker has just confirmed.

    `rows` are the relay's claimed rows (`message_id`, `message_type`,
    `correlation_id`, `exchange`, `routing_key`, `created_at`); the lag is the time
    from the outbox insert to `at` (the confirm).
    """
    when = at or now()
    found = []
    for row in rows:
        checkout_id = _uuid(row.get("correlation_id"))
        if checkout_id is None:
            continue
        created = row.get("created_at")
        lag = (when - created).total_seconds() * 1000 if isinstance(created, datetime) else None
        exchange, key = row.get("exchange"), row.get("routing_key")
        found.append(
            Event(
                checkout_id=checkout_id,
                source="relay",
                kind=OUTBOX_PUBLISHED,
                at=when,
                message_id=_uuid(row.get("message_id")),
                message_type=row.get("message_type"),
                duration_ms=max(lag, 0.0) if lag is not None else None,
                detail=f"{exchange} {key}" if exchange and key else None,
            )
        )
    return found


async def record_published(
    conn: psycopg.AsyncConnection[Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    at: datetime | None = None,
) -> None:
    """The relay, after the confirms and in the transaction that deletes `rows`:
    one `outbox.published` event per row, all in one INSERT."""
    await insert_events(conn, published_events(rows, at=at))


async def write_events(target: UnitOfWork | AsyncEngine, events: Iterable[Event]) -> bool:
    """Write `events` in a transaction of their own; best effort.

    For callers with no transaction at hand (the consumer shell after it settled a
    message, the payment step). A failure is logged and False returned: a lost
    timeline line must never fail or delay the message itself.
    """
    batch = list(events)
    if not batch:
        return True
    engine = target.engine if isinstance(target, UnitOfWork) else target
    try:
        async with engine.begin() as connection:
            await insert_events(connection, batch)
    except Exception as exc:
        log.warning("could not record checkout events", error=repr(exc), events=len(batch))
        return False
    return True
