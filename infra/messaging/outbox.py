"""Writing to the transactional outbox: a message is committed with the change that caused it.

`outbox_row` is the INSERT of a message's row, for a caller that folds it into a
statement with its other writes (every saga transition); `outbox_message` the row's
values, for a statement that inserts it its own way (a checkout). `add_to_outbox` stages
the same row in an ORM session, for code that already works in one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import PUBLIC_EVENTS, SCHEMA_VERSION_HEADER, Message
from infra.db.models import OutboxMessage
from infra.tracing import inject

PUBLIC_TYPES = frozenset(event.message_type for event in PUBLIC_EVENTS)


def exchange_for(message: Message) -> Literal["orders", "internal"]:
    """Public events go to `{ns}.orders`; the saga's own messages to `{ns}.internal`."""
    return "orders" if message.message_type in PUBLIC_TYPES else "internal"


_INSERT = (
    "INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id,"
    " headers, body, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_UNLESS = (
    "INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id,"
    " headers, body, created_at) SELECT %s, %s, %s, %s, %s, %s, %s, %s"
    " WHERE NOT EXISTS ({})"
)
"""`_INSERT` unless a query (put in its braces) finds a row."""


def _headers(message: Message | type[Message], headers: dict[str, Any] | None) -> dict[str, Any]:
    row_headers: dict[str, Any] = {SCHEMA_VERSION_HEADER: message.schema_version}
    row_headers.update(headers or {})
    inject(row_headers)  # the current trace continues wherever this message goes
    return row_headers


@dataclass(frozen=True, slots=True)
class OutboxValues:
    """The values of `message`'s outbox row (its id and creation time are the row's own)."""

    message_id: uuid.UUID
    exchange: str
    routing_key: str
    message_type: str
    correlation_id: uuid.UUID
    headers: Jsonb
    body: str
    created_at: datetime

    def values(self) -> tuple[Any, ...]:
        """In the order of `_INSERT`'s columns."""
        return (
            self.message_id,
            self.exchange,
            self.routing_key,
            self.message_type,
            self.correlation_id,
            self.headers,
            self.body,
            self.created_at,
        )


def outbox_message(
    message: Message,
    *,
    correlation_id: uuid.UUID,
    headers: dict[str, Any] | None = None,
) -> OutboxValues:
    """`message`'s outbox row, for a statement that inserts it its own way (a checkout)."""
    return OutboxValues(
        message_id=uuid.uuid4(),
        exchange=exchange_for(message),
        routing_key=message.routing_key,
        message_type=message.message_type,
        correlation_id=correlation_id,
        headers=Jsonb(_headers(message, headers)),
        body=message.model_dump_json(),
        created_at=datetime.now(UTC),
    )


def outbox_envelope(
    kind: type[Message],
    *,
    correlation_id: uuid.UUID,
    headers: dict[str, Any] | None = None,
) -> OutboxValues:
    """A `kind` message's outbox row without its body, for a statement that writes the
    body itself from the rows it reads (a checkout's `ChargePayment`, whose amount is the
    order's, read under the order's lock). Its `body` is empty."""
    return OutboxValues(
        message_id=uuid.uuid4(),
        exchange="orders" if kind.message_type in PUBLIC_TYPES else "internal",
        routing_key=kind.routing_key,
        message_type=kind.message_type,
        correlation_id=correlation_id,
        headers=Jsonb(_headers(kind, headers)),
        body="",
        created_at=datetime.now(UTC),
    )


def outbox_row(
    message: Message,
    *,
    correlation_id: uuid.UUID,
    headers: dict[str, Any] | None = None,
    unless: tuple[str, tuple[Any, ...]] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The INSERT of `message`'s outbox row and its parameters, to run or to combine.

    For a caller that folds several writes into one statement (every saga transition:
    `infra.db.statements.as_one`). `unless`: a query (SQL, parameters) that, when it
    finds a row committed before the statement began, leaves the message unwritten; the
    statement's other writes are not visible to it.
    """
    row = outbox_message(message, correlation_id=correlation_id, headers=headers)
    if unless is None:
        return _INSERT, row.values()
    query, params = unless
    return _INSERT_UNLESS.format(query), (*row.values(), *params)


def add_to_outbox(
    session: AsyncSession,
    message: Message,
    *,
    correlation_id: uuid.UUID,
    headers: dict[str, Any] | None = None,
) -> OutboxMessage:
    """Stage `message` in the session's transaction; the relay publishes it after commit."""
    row = OutboxMessage(
        message_id=uuid.uuid4(),
        exchange=exchange_for(message),
        routing_key=message.routing_key,
        message_type=message.message_type,
        correlation_id=correlation_id,
        headers=_headers(message, headers),
        body=message.model_dump_json(),
        created_at=datetime.now(UTC),
    )
    session.add(row)
    return row
