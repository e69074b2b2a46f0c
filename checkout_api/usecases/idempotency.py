"""A request's first response, stored under its Idempotency-Key.

A checkout's keys live in `idempotency_keys`, a cancellation's in `cancellation_keys`:
the same columns but the one naming what the request made. Each use case has its own
statements; storing a first response is the same for both.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

ACCEPTED = 202
"""The status every stored first response has: a checkout or cancellation accepted."""


async def store_first_response(
    conn: psycopg.AsyncConnection[Any],
    sql: str,
    key: str,
    order_id: uuid.UUID,
    made: uuid.UUID,
    body: dict[str, Any],
) -> bool:
    """Store `body` as the 202 first response to `key` with `sql`, the use case's insert
    into its keys table that returns a row only when it stored one (key, order, what the
    request made, status, response, time); False if another request stored the key
    first."""
    cursor = await conn.execute(
        sql, (key, order_id, made, ACCEPTED, Jsonb(body), datetime.now(UTC))
    )
    return await cursor.fetchone() is not None
