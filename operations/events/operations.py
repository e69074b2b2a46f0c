"""A backfill as the operator runs it: checked, done, and written to the audit log.

The entry point for the command line (and a later console form). The audit log must
be writable before anything is copied. A backfill that stops part-way, because the
broker went away or the operator pressed Ctrl-C, is recorded as `interrupted` with
what it copied, then `BackfillStopped` goes on to the caller, saying where to resume.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aio_pika.abc import AbstractConnection

from infra.db.session import UnitOfWork
from operations.dlq import audit
from operations.dlq.errors import AuditUnavailable
from operations.events.backfill import BackfillOutcome, BackfillProgress, backfill, ensure_queue
from operations.events.errors import BackfillNotRecorded, BackfillStopped
from operations.events.reading import Patience, Window
from operations.events.record import record_backfill
from operations.events.selection import EventSelection

INTERRUPTED_BY_OPERATOR = "interrupted (Ctrl-C)"


async def backfill_recorded(
    connection: AbstractConnection,
    uow: UnitOfWork,
    stream: str,
    queue: str,
    selection: EventSelection,
    *,
    actor: str,
    reason: str,
    rate: float | None = None,
    dry_run: bool = False,
    patience: Patience | None = None,
    on_progress: BackfillProgress | None = None,
) -> BackfillOutcome:
    """Backfill `queue` from `stream` (see `operations.events.backfill`) and record it."""
    started = datetime.now(UTC)
    outcome = BackfillOutcome(stream, queue, Window.of(selection, started))

    async def run(queue_checked: bool = False) -> BackfillOutcome:
        return await backfill(
            connection,
            stream,
            queue,
            selection,
            started=started,
            rate=rate,
            dry_run=dry_run,
            patience=patience,
            on_progress=on_progress,
            outcome=outcome,
            queue_checked=queue_checked,
        )

    if dry_run:
        return await run()
    await ensure_queue(connection, queue)  # a missing queue is the first thing to say
    await audit.ensure_available(uow)

    async def record(completed: bool, stopped: BackfillStopped | None = None) -> None:
        try:
            await record_backfill(
                uow, outcome, actor=actor, reason=reason, completed=completed, at=started
            )
        except AuditUnavailable as exc:
            raise BackfillNotRecorded(outcome, exc.cause, stopped) from exc

    try:
        await run(queue_checked=True)
    except BackfillStopped as exc:
        await record(completed=False, stopped=exc)
        raise
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task. Record what was copied before ending.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        stopped = BackfillStopped(outcome, INTERRUPTED_BY_OPERATOR)
        await record(completed=False, stopped=stopped)
        raise stopped from None
    await record(completed=True)
    return outcome
