"""The cancellations' due deadlines, fired as inputs to the cancellation saga.

The checkouts' claimer (`CheckoutSaga.fire_due`) has a twin here for the rows with
`saga = 'cancellation'`, run by the same loop (`saga.deadlines`). Each round claims the
due rows, each with its cancellation and its order, and applies each as a
`DeadlineFired` through the cancellation's shell (`saga.cancellation.apply`) in the
transaction that claimed it, which also deletes the row unless the transition set it
again. A crash before the commit releases the locks and leaves the row due; a later
round (of this instance after its restart, or of another) fires it. Committed, the row
is gone or moved: none fires twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from infra.db.session import UnitOfWork
from saga import cancellation
from saga.cancellation_state_machine import DeadlineFired, SetDeadline

log = structlog.get_logger()

_CLAIM_DUE = (
    "SELECT d.deadline_id, d.kind, d.attempts, c.cancellation_id, k.state"
    " FROM deadlines d JOIN cancellations c ON c.cancellation_id = d.saga_id"
    " JOIN orders o ON o.order_id = c.order_id"
    " LEFT JOIN checkouts k ON k.checkout_id = c.checkout_id"
    " WHERE d.saga = 'cancellation' AND d.due_at <= %s"
    " ORDER BY d.due_at LIMIT %s"
    " FOR UPDATE OF d SKIP LOCKED FOR NO KEY UPDATE OF o, c SKIP LOCKED"
)
"""Due deadlines with their cancellations and orders, locked together, none waited for.
SKIP LOCKED on all three: a row another instance is firing is not fired twice, and one
whose order or cancellation a transition holds (the checkout's end taking the
cancellation over, which deletes this very row) is left for the next round instead of
waited for: that transition locks the order and the cancellation first and the
deadline last, so waiting here could deadlock with it. The shell then takes the same
locks again (held already: no wait). The checkout is read, not locked: a checkout
ending meanwhile waits for the order's lock held here, then finds the cancellation
still waiting and takes it over."""
_DELETE_FIRED = "DELETE FROM deadlines WHERE deadline_id = %s"
_NEXT_DUE = "SELECT min(due_at) FROM deadlines WHERE saga = 'cancellation'"


@dataclass(frozen=True, slots=True)
class Fired:
    """One deadline fired: what it did to its cancellation."""

    deadline_id: uuid.UUID
    applied: cancellation.Applied


class CancellationDeadlines:
    """Fires the cancellations' due deadlines (any number of instances, each row once)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def fire_due(self, limit: int = 50) -> list[Fired]:
        """Fire the deadlines due now (at most `limit`) in one transaction, committed on
        return."""
        now = datetime.now(UTC)
        fired: list[Fired] = []
        async with self._uow.transaction() as conn:
            rows = await (await conn.execute(_CLAIM_DUE, (now, limit))).fetchall()
            for deadline_id, kind, attempts, cancellation_id, checkout_state in rows:
                message = DeadlineFired(kind, attempts, checkout_state)
                applied = await self._fire(conn, deadline_id, cancellation_id, message, now)
                fired.append(Fired(deadline_id, applied))
            await conn.commit()
        for one in fired:
            cancellation.observe(one.applied)
            log.info(
                "deadline fired",
                cancellation_id=str(one.applied.cancellation_id),
                order_id=str(one.applied.order_id),
            )
        return fired

    async def _fire(
        self,
        conn: psycopg.AsyncConnection[Any],
        deadline_id: uuid.UUID,
        cancellation_id: uuid.UUID,
        message: DeadlineFired,
        now: datetime,
    ) -> cancellation.Applied:
        """Apply one claimed deadline; delete its row unless the transition set it again."""
        applied = await cancellation.apply(
            conn, cancellation_id, message, now, claim=None, fired=message.fired + 1
        )
        transition = applied.transition
        if transition is None or not any(
            isinstance(e, SetDeadline) and e.kind == message.kind for e in transition.effects
        ):
            await conn.execute(_DELETE_FIRED, (deadline_id,))
        return applied

    async def next_due(self) -> datetime | None:
        """When the earliest deadline of any cancellation is due (None: there is none)."""
        async with self._uow.reads() as conn:
            row = await (await conn.execute(_NEXT_DUE)).fetchone()
        return row[0] if row is not None else None
