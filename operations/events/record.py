"""A backfill in the audit log (`dlq_audit`), beside replays and purges.

`queue` is the queue copied into, `dlq` the log read from, `message_ids` the events
copied (so `checkout trace` finds the backfill of an order's event), and `details`
the range asked for and how far it got: the first and last offset copied, the last
event's time, and the offset to resume from. Written after the backfill (or after it
stopped: `outcome = 'interrupted'`), in its own transaction, stamped with the time it
began. A dry run is not recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime

from infra.db.models import DlqAuditEntry
from infra.db.session import UnitOfWork
from operations.dlq.audit import COMPLETED, INTERRUPTED, AuditRecord, write
from operations.events.backfill import BackfillOutcome

ACTION = "backfill"


async def record_backfill(
    uow: UnitOfWork,
    outcome: BackfillOutcome,
    *,
    actor: str,
    reason: str,
    completed: bool,
    at: datetime | None = None,
) -> AuditRecord:
    """Write what `outcome` copied; `completed=False` for a backfill that stopped part-way."""
    row = DlqAuditEntry(
        at=at or datetime.now(UTC),
        actor=actor,
        action=ACTION,
        queue=outcome.queue,
        dlq=outcome.stream,
        message_count=outcome.count,
        message_ids=list(outcome.message_ids),
        missing=[],
        reason=reason,
        outcome=COMPLETED if completed else INTERRUPTED,
        details=outcome.details(),
    )
    return await write(uow, row)
