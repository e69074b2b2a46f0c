"""Reading a checkout with its steps (one statement, steps in insertion order)."""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.ext.asyncio import AsyncConnection

from checkout_api.schemas.checkouts import CheckoutOut, StepOut
from checkout_api.usecases.sql import CHECKOUT_BY_ID


async def _load(
    conn: AsyncConnection, statement: Executable, params: dict[str, Any]
) -> CheckoutOut | None:
    rows = (await conn.execute(statement, params)).all()
    if not rows:
        return None
    first = rows[0]
    return CheckoutOut(
        checkout_id=first.checkout_id,
        order_id=first.order_id,
        state=first.state,
        failure_reason=first.failure_reason,
        steps=[
            StepOut(name=r.name, status=r.status, at=r.at.astimezone(UTC), detail=r.detail)
            for r in rows
            if r.name is not None
        ],
        created_at=first.created_at.astimezone(UTC),
        updated_at=first.updated_at.astimezone(UTC),
    )


async def load_checkout(conn: AsyncConnection, checkout_id: uuid.UUID) -> CheckoutOut | None:
    """The checkout and its steps, or None if there is no such checkout."""
    return await _load(conn, CHECKOUT_BY_ID, {"checkout_id": checkout_id})
