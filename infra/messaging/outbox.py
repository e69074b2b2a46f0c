"""Writing to the transactional outbox: a message is committed with the change that caused it.

`insert_outbox` is the hot path's way (the API's checkout): one INSERT on the
transaction's psycopg connection; `outbox_row` the same INSERT for a caller that folds it
into a statement of its own (every saga transition). `add_to_outbox` stages the same row
in an ORM session, for code that already works in one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import SCHEMA_VERSION_HEADER, Message, OrderPaid, OrderPaymentFailed
from infra.db.models import OutboxMessage
from infra.tracing import inject

PUBLIC_TYPES = {OrderPaid.message_type, OrderPaymentFailed.message_type}


def exchange_for(message: Message) -> Literal["orders", "internal"]:
    """Public events go to `{ns}.orders`; the saga's own messages to `{ns}.internal`."""
    return "orders" if message.message_type in PUBLIC_TYPES else "internal"


_INSERT = (
    "INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id,"
    " headers, body, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)


def _headers(message: Message, headers: dict[str, Any] | None) -> dict[str, Any]:
    row_headers: dict[str, Any] = {SCHEMA_VERSION_HEADER: message.schema_version}
    row_headers.update(headers or {})
    inject(row_headers)  # the current trace continues wherever this message goes
    return row_headers


def outbox_row(
    message: Message,
    *,
    correlation_id: uuid.UUID,
    headers: dict[str, Any] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The INSERT of `message`'s outbox row and its parameters, to run or to combine.

    For a caller that folds several writes into one statement (the saga, a
    checkout: `infra.db.statements.as_one`); others use `insert_outbox`.
    """
    params = (
        uuid.uuid4(),
        exchange_for(message),
        message.routing_key,
        message.message_type,
        correlation_id,
        Jsonb(_headers(message, headers)),
        message.model_dump_json(),
        datetime.now(UTC),
    )
    return _INSERT, params


async def insert_outbox(
    conn: psycopg.AsyncConnection[Any],
    message: Message,
    *,
    correlation_id: uuid.UUID,
    headers: dict[str, Any] | None = None,
) -> None:
    """Write `message` in `conn`'s transaction; the relay publishes it after commit."""
    await conn.execute(*outbox_row(message, correlation_id=correlation_id, headers=headers))


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
