"""Reading a cancellation with its refund and its steps (one statement)."""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

import psycopg

from checkout_api.schemas.cancellations import CancellationOut, RefundOut
from checkout_api.schemas.checkouts import StepOut

_BY_ID = (
    "SELECT c.cancellation_id, c.order_id, c.reason, c.state, c.rejection_reason,"
    " c.created_at, c.updated_at, r.refund_id, r.status, r.amount,"
    " s.name, s.status, s.at, s.detail"
    " FROM cancellations c"
    " LEFT JOIN refunds r ON r.cancellation_id = c.cancellation_id"
    " LEFT JOIN cancellation_steps s ON s.cancellation_id = c.cancellation_id"
    " WHERE c.cancellation_id = %s ORDER BY s.id"
)


async def load_cancellation(
    conn: psycopg.AsyncConnection[Any], cancellation_id: uuid.UUID
) -> CancellationOut | None:
    """The cancellation, its refund and its steps; None if there is no such cancellation."""
    rows = await (await conn.execute(_BY_ID, (cancellation_id,))).fetchall()
    if not rows:
        return None
    first = rows[0]
    refund_id, refund_status, refund_amount = first[7:10]
    return CancellationOut(
        cancellation_id=first[0],
        order_id=first[1],
        reason=first[2],
        state=first[3],
        rejection_reason=first[4],
        refund=None
        if refund_id is None
        else RefundOut(refund_id=refund_id, status=refund_status, amount=refund_amount),
        steps=[
            StepOut(name=name, status=status, at=at.astimezone(UTC), detail=detail)
            for name, status, at, detail in (row[10:] for row in rows)
            if name is not None
        ],
        created_at=first[5].astimezone(UTC),
        updated_at=first[6].astimezone(UTC),
    )
