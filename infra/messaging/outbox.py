"""Writing to the transactional outbox: a message is committed with the change that caused it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from contracts import SCHEMA_VERSION_HEADER, Message, OrderPaid, OrderPaymentFailed
from infra.db.models import OutboxMessage
from infra.tracing import inject

PUBLIC_TYPES = {OrderPaid.message_type, OrderPaymentFailed.message_type}


def exchange_for(message: Message) -> Literal["orders", "internal"]:
    """Public events go to `{ns}.orders`; the saga's own messages to `{ns}.internal`."""
    return "orders" if message.message_type in PUBLIC_TYPES else "internal"


def add_to_outbox(
    session: AsyncSession,
    message: Message,
    *,
    correlation_id: uuid.UUID,
    headers: dict[str, Any] | None = None,
) -> OutboxMessage:
    """Stage `message` in the session's transaction; the relay publishes it after commit."""
    row_headers: dict[str, Any] = {SCHEMA_VERSION_HEADER: message.schema_version}
    row_headers.update(headers or {})
    inject(row_headers)  # the current trace continues wherever this message goes
    row = OutboxMessage(
        message_id=uuid.uuid4(),
        exchange=exchange_for(message),
        routing_key=message.routing_key,
        message_type=message.message_type,
        correlation_id=correlation_id,
        headers=row_headers,
        body=message.model_dump_json(),
        created_at=datetime.now(UTC),
    )
    session.add(row)
    return row
