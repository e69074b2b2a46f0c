"""The inbox: de-duplication by message_id, written in the same transaction as the effect.

Like a tracking record in an event-sourced process application: a consumer claims
`(consumer, message_id)` first; if the row already exists, the message was applied
before (a redelivery or a duplicate publish) and the handler skips it. A concurrent
duplicate blocks on the primary key until the first transaction ends, then finds
the row (skips) or, if the first rolled back, claims it.

Both run once per message on the hot path, so they are plain statements on the
transaction's psycopg connection (`UnitOfWork.transaction`), not ORM work.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

_CLAIM = (
    "INSERT INTO inbox (consumer, message_id, received_at) VALUES (%s, %s, %s) "
    "ON CONFLICT DO NOTHING RETURNING message_id"
)
_SEEN = "SELECT 1 FROM inbox WHERE consumer = %s AND message_id = %s"


async def claim(conn: psycopg.AsyncConnection[Any], consumer: str, message_id: uuid.UUID) -> bool:
    """Record that `consumer` applies `message_id` in this transaction; False if it already did."""
    cursor = await conn.execute(_CLAIM, (consumer, message_id, datetime.now(UTC)))
    return await cursor.fetchone() is not None


async def seen(conn: psycopg.AsyncConnection[Any], consumer: str, message_id: uuid.UUID) -> bool:
    """True if `consumer` has already applied `message_id` (a cheap check before a remote call)."""
    cursor = await conn.execute(_SEEN, (consumer, message_id))
    return await cursor.fetchone() is not None
