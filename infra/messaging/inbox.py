"""The inbox: de-duplication by message_id, written in the same transaction as the effect.

Like a tracking record in an event-sourced process application: a consumer claims
`(consumer, message_id)` first; if the row already exists, the message was applied
before (a redelivery or a duplicate publish) and the handler skips it. A concurrent
duplicate blocks on the primary key until the first transaction ends, then finds
the row (skips) or, if the first rolled back, claims it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from infra.db.models import InboxMessage


async def claim(session: AsyncSession, consumer: str, message_id: uuid.UUID) -> bool:
    """Record that `consumer` applies `message_id` in this transaction; False if it already did."""
    statement = (
        insert(InboxMessage)
        .values(consumer=consumer, message_id=message_id, received_at=datetime.now(UTC))
        .on_conflict_do_nothing()
        .returning(InboxMessage.message_id)
    )
    return (await session.execute(statement)).first() is not None


async def seen(session: AsyncSession, consumer: str, message_id: uuid.UUID) -> bool:
    """True if `consumer` has already applied `message_id` (a cheap check before a remote call)."""
    statement = select(InboxMessage.message_id).where(
        InboxMessage.consumer == consumer, InboxMessage.message_id == message_id
    )
    return (await session.execute(statement)).first() is not None
