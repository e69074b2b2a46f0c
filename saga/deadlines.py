"""The deadline claimer: fires the checkouts' due deadlines, in every saga instance.

The `deadlines` table is the truth; the timer here only decides when to look. Each
round claims the due rows with their checkouts (`FOR UPDATE SKIP LOCKED`, so two
instances never fire one row twice) and applies each as an input to its checkout's
state machine in the same transaction that deletes or re-sets the row
(`CheckoutSaga.fire_due`). A crash between the claim and the commit leaves the row due,
and a later round (of this instance after its restart, or of another) fires it.

Between rounds it sleeps until the earliest deadline, at most `POLL_SECONDS`: a
deadline set meanwhile by another process (a new checkout's, due two minutes later by
default) is never found much later than it is due.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from saga.orchestrator import CheckoutSaga

log = structlog.get_logger()

POLL_SECONDS = 1.0
BATCH = 50


async def run_deadlines(saga: CheckoutSaga, *, poll: float = POLL_SECONDS) -> None:
    """Fire due deadlines until cancelled (the saga process's shutdown)."""
    while True:
        try:
            fired = await saga.fire_due(BATCH)
            if len(fired) == BATCH:
                continue  # more may be due right now
            wait = await _until_next(saga, poll)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The database is away, say: nothing was fired or everything rolled back;
            # the rows are still due, and the next round fires them. One line, no
            # traceback: during an outage this repeats every round.
            log.warning("firing deadlines failed; trying again", error=repr(exc), in_s=poll)
            wait = poll
        await asyncio.sleep(wait)


async def _until_next(saga: CheckoutSaga, poll: float) -> float:
    due = await saga.next_due()
    if due is None:
        return poll
    return min(max((due - datetime.now(UTC)).total_seconds(), 0.0), poll)
