"""Replay and purge as the operator runs them: checked, done, and written to the audit log.

The entry points for the command line and for a later HTTP endpoint. A dry run is
not recorded. An operation the broker interrupts is recorded with what it did before
(`outcome = 'interrupted'`), then the error goes on to the caller. One that did not
find some of the message ids it was asked for is recorded as `incomplete`, with those
ids in `missing` (`Outcome.missing` tells the caller).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime

from aio_pika.abc import AbstractConnection

from infra.db.session import UnitOfWork
from infra.messaging.topology import ConsumedQueue
from operations.dlq import audit
from operations.dlq.errors import Interrupted
from operations.dlq.outcome import Outcome, Progress
from operations.dlq.purge import purge
from operations.dlq.replay import replay
from operations.dlq.selection import Selection


async def replay_recorded(
    connection: AbstractConnection,
    uow: UnitOfWork,
    queue: ConsumedQueue,
    selection: Selection,
    *,
    actor: str,
    reason: str | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> Outcome:
    """Replay the selected messages of `queue.dlq` (see `operations.dlq.replay`) and record it."""
    if dry_run:
        return await replay(connection, queue, selection, dry_run=True, on_progress=on_progress)
    await audit.ensure_available(uow)
    return await _recorded(
        uow,
        replay(connection, queue, selection, rate=rate, on_progress=on_progress),
        actor=actor,
        reason=reason,
    )


async def purge_recorded(
    connection: AbstractConnection,
    uow: UnitOfWork,
    queue: ConsumedQueue,
    selection: Selection,
    *,
    actor: str,
    reason: str | None = None,
    on_progress: Progress | None = None,
) -> Outcome:
    """Drop the selected messages of `queue.dlq` (see `operations.dlq.purge`) and record it."""
    await audit.ensure_available(uow)
    return await _recorded(
        uow,
        purge(connection, queue, selection, on_progress=on_progress),
        actor=actor,
        reason=reason,
    )


async def _recorded(
    uow: UnitOfWork, operation: Awaitable[Outcome], *, actor: str, reason: str | None
) -> Outcome:
    started = datetime.now(UTC)  # the coroutine has not run yet: it runs when awaited
    try:
        outcome = await operation
    except Interrupted as exc:
        await audit.record(
            uow, exc.outcome, actor=actor, reason=reason, completed=False, at=started
        )
        raise
    await audit.record(uow, outcome, actor=actor, reason=reason, at=started)
    return outcome
