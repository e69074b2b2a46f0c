"""The audit log of replays, purges and backfills (`dlq_audit`): who, when, which messages, why.

Backfills (`checkout events backfill`) are written by `operations.events.record`.

Written after the operation, in its own transaction. The operations check first that
the log can be written (`ensure_available`), so a database that is down stops them
before any message moves.

An entry's `outcome` is `completed` only when the operation did all it was asked:
`interrupted` when the broker stopped it part-way, `incomplete` when it ran to its end
but some of the message ids asked for were not in the queue (`missing` names them;
with none found the entry has 0 messages). The command exits 1 in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from infra.db.models import DlqAuditEntry
from infra.db.session import UnitOfWork
from operations.dlq.errors import AuditUnavailable
from operations.dlq.outcome import Outcome

COMPLETED = "completed"
INTERRUPTED = "interrupted"
INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class AuditRecord:
    """One line of `dlq history`."""

    id: int
    at: datetime
    actor: str
    action: str
    queue: str
    dlq: str
    messages: int
    message_ids: list[str | None]
    missing: list[str]
    reason: str | None
    outcome: str
    details: dict[str, Any] | None = None  # a backfill's range and offsets

    @classmethod
    def of(cls, row: DlqAuditEntry) -> AuditRecord:
        return cls(
            id=row.id,
            at=row.at,
            actor=row.actor,
            action=row.action,
            queue=row.queue,
            dlq=row.dlq,
            messages=row.message_count,
            message_ids=list(row.message_ids),
            missing=list(row.missing),
            reason=row.reason,
            outcome=row.outcome,
            details=row.details,
        )

    def as_json(self) -> dict[str, Any]:
        shown = {
            "id": self.id,
            "at": self.at.astimezone(UTC).isoformat(),
            "actor": self.actor,
            "action": self.action,
            "queue": self.queue,
            "dlq": self.dlq,
            "messages": self.messages,
            "message_ids": self.message_ids,
            "missing": self.missing,
            "reason": self.reason,
            "outcome": self.outcome,
        }
        if self.details is not None:  # a backfill: its range and offsets
            shown["details"] = self.details
        return shown


async def ensure_available(uow: UnitOfWork) -> None:
    """Raise `AuditUnavailable` unless the audit table can be reached."""
    try:
        async with uow() as session:
            await session.execute(select(DlqAuditEntry.id).limit(1))
    except SQLAlchemyError as exc:
        raise AuditUnavailable(exc) from exc


async def record(
    uow: UnitOfWork,
    outcome: Outcome,
    *,
    actor: str,
    reason: str | None,
    completed: bool = True,
    at: datetime | None = None,
) -> AuditRecord:
    """Write what `outcome` did; `completed=False` for an operation the broker interrupted.

    Recorded as `incomplete` when ids asked for were not found (see `outcome_of`).
    `at` is when the operation began (default: now): a replayed message may be handled
    before a long replay ends, and `checkout trace` shows the replay before that.
    """
    row = DlqAuditEntry(
        at=at or datetime.now(UTC),
        actor=actor,
        action=outcome.action,
        queue=outcome.queue.name,
        dlq=outcome.queue.dlq,
        message_count=outcome.count,
        message_ids=list(outcome.message_ids),
        missing=list(outcome.missing),
        reason=reason,
        outcome=outcome_of(outcome, completed=completed),
    )
    return await write(uow, row, outcome)


async def write(uow: UnitOfWork, row: DlqAuditEntry, moved: Outcome | None = None) -> AuditRecord:
    """Add `row` to the log in a transaction of its own.

    Raises `AuditUnavailable` (with `moved`: what the messages' operation already did)
    when the database refuses it.
    """
    try:
        async with uow() as session:
            session.add(row)
            await session.commit()
            return AuditRecord.of(row)
    except SQLAlchemyError as exc:
        raise AuditUnavailable(exc, moved) from exc


def outcome_of(outcome: Outcome, *, completed: bool) -> str:
    """The entry's `outcome`: `interrupted` if the operation did not run to its end,
    `incomplete` if it did but did not find every message id it was asked for, else
    `completed`."""
    if not completed:
        return INTERRUPTED
    return INCOMPLETE if outcome.missing else COMPLETED


async def history(uow: UnitOfWork, limit: int | None = None) -> list[AuditRecord]:
    """The audit log, newest first."""
    query = select(DlqAuditEntry).order_by(DlqAuditEntry.at.desc(), DlqAuditEntry.id.desc())
    if limit is not None:
        query = query.limit(limit)
    try:
        async with uow() as session:
            # Copied inside the session: leaving it rolls back, which expires the rows.
            return [AuditRecord.of(row) for row in await session.scalars(query)]
    except SQLAlchemyError as exc:
        raise AuditUnavailable(exc) from exc
