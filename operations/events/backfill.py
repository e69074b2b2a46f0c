"""`checkout events backfill`: copy events of the log into one existing queue.

The copies go through the default exchange with the queue's name as routing key
(mandatory, confirmed), not through `{ns}.orders`, so no other queue sees them. Each
keeps the original's body, `message_id`, `correlation_id`, type, timestamp, content
type, delivery mode and headers: to its consumer a copy is the event itself, and one
that de-duplicates by `message_id` handles each event once, whether it came live, by
the backfill, or both.

Events are copied in log order, at most `rate` a second, with up to `IN_FLIGHT`
copies awaiting the broker's confirm (one at a time made a copy cost a round trip). An
event counts as handled only once its copy and every copy before it are confirmed, so
`BackfillOutcome.resume_offset`, the offset after the last event handled (copied, or
looked at and not selected), never passes an unconfirmed copy: an interrupted backfill
goes on from there (`--since-offset`) and copies nothing twice that it reported as
copied; a copy that was in flight when it stopped may be copied again, which the
subscriber's de-duplication absorbs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from operations.channels import close_quietly
from operations.dlq.errors import QueueNotDeclared
from operations.dlq.pacing import Pacer
from operations.dlq.reading import ensure_declared
from operations.events.errors import BackfillStopped, BadTarget, LogLost, QueueMissing
from operations.events.event import LoggedEvent
from operations.events.reading import Patience, Window, read_log
from operations.events.selection import EventSelection


@dataclass
class BackfillOutcome:
    """Filled in while the backfill runs, so a stopped one still says how far it got."""

    stream: str
    queue: str
    window: Window
    dry_run: bool = False
    rate: float | None = None
    scanned: int = 0
    message_ids: list[str | None] = field(default_factory=list)  # copied (or would be)
    selected: list[LoggedEvent] = field(default_factory=list)  # a dry run's, to show them
    first_copied: LoggedEvent | None = None
    last_copied: LoggedEvent | None = None
    last_seen: LoggedEvent | None = None
    resume_offset: int | None = None  # the offset after the last event handled

    @property
    def selection(self) -> EventSelection:
        return self.window.selection

    @property
    def count(self) -> int:
        return len(self.message_ids)

    @property
    def resume_from(self) -> int | None:
        """The offset a stopped backfill goes on from: after the last event handled, or,
        when it stopped before handling any, where it started (None: its `since`)."""
        if self.resume_offset is not None:
            return self.resume_offset
        return self.selection.since_offset

    def handled(self, event: LoggedEvent, copied: bool) -> None:
        self.scanned += 1
        self.last_seen = event
        if copied:
            self.message_ids.append(event.message_id)
            if self.dry_run:
                self.selected.append(event)
            self.first_copied = self.first_copied or event
            self.last_copied = event
        self.resume_offset = event.offset + 1

    def details(self) -> dict[str, Any]:
        """The range and the offsets, as the audit log keeps them."""
        return {
            "source": self.stream,
            **self.selection.as_json(),
            "end": self.window.end.isoformat(),
            "rate": self.rate,
            "scanned": self.scanned,
            "first_offset": self.first_copied.offset if self.first_copied else None,
            "last_offset": self.last_copied.offset if self.last_copied else None,
            "last_timestamp": _when(self.last_copied),
            "resume_offset": self.resume_offset,
        }

    def summary(self) -> dict[str, Any]:
        """The JSON document the command prints."""
        return {
            "queue": self.queue,
            "copied": self.count,
            "dry_run": self.dry_run,
            "message_ids": self.message_ids,
            **self.details(),
        }


BackfillProgress = Callable[[BackfillOutcome], None]

IN_FLIGHT = 64  # copies published and not yet confirmed, at most


def _settled(confirm: asyncio.Task[Any] | None) -> bool:
    return confirm is None or confirm.done()


def _when(event: LoggedEvent | None) -> str | None:
    return event.timestamp.isoformat() if event and event.timestamp else None


async def ensure_queue(connection: AbstractConnection, name: str) -> None:
    """Raise `QueueMissing` unless `name` exists; never creates it (a passive declare)."""
    try:
        await ensure_declared(connection, name)
    except QueueNotDeclared:
        raise QueueMissing(name) from None


async def backfill(
    connection: AbstractConnection,
    stream: str,
    queue: str,
    selection: EventSelection,
    *,
    started: datetime,
    rate: float | None = None,
    dry_run: bool = False,
    patience: Patience | None = None,
    on_progress: BackfillProgress | None = None,
    outcome: BackfillOutcome | None = None,
    queue_checked: bool = False,
) -> BackfillOutcome:
    """Copy the selected events of `stream` into `queue` (see the module).

    `outcome` may be given to watch it fill; it is returned. `queue_checked`: the caller
    has just made sure `queue` exists (`ensure_queue`), so it is not asked again.

    Raises:
        BadTarget: `queue` is the log itself.
        QueueMissing: `queue` does not exist.
        LogNotDeclared: the log does not exist.
        BackfillStopped: the broker failed part-way; its outcome says how far it got.
    """
    if queue == stream:
        raise BadTarget(f"{queue} is the event log itself: name the queue to copy into")
    outcome = outcome or BackfillOutcome(stream, queue, Window.of(selection, started))
    outcome.dry_run, outcome.rate = dry_run, rate
    pacer = Pacer(rate)
    if not queue_checked:
        await ensure_queue(connection, queue)
    publisher: AbstractChannel | None = None
    # Copies in flight, oldest first: an event counts as handled (and its offset as
    # done) only once it and every event before it are confirmed, so that the resume
    # offset never skips an unconfirmed copy.
    in_flight: deque[tuple[LoggedEvent, bool, asyncio.Task[Any] | None]] = deque()

    async def settle(keep: int) -> None:
        while len(in_flight) > keep or (in_flight and _settled(in_flight[0][2])):
            event, selected, confirm = in_flight[0]
            if confirm is not None:
                await confirm  # raises what the publish raised, the event left in place
            in_flight.popleft()
            outcome.handled(event, selected)
            if on_progress is not None:
                on_progress(outcome)

    def count_confirmed() -> None:
        """After a failure: count the oldest copies the broker did confirm."""
        while in_flight:
            event, selected, confirm = in_flight[0]
            if confirm is not None and not (
                confirm.done() and not confirm.cancelled() and confirm.exception() is None
            ):
                return
            in_flight.popleft()
            outcome.handled(event, selected)

    try:
        if not dry_run:
            publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        async with contextlib.aclosing(
            read_log(connection, stream, outcome.window, patience=patience)
        ) as events:
            async for event in events:
                selected = selection.matches(event)
                confirm = None
                if selected and publisher is not None:
                    await pacer.wait()
                    # Done once the broker confirmed the copy; a return (the queue was
                    # deleted meanwhile) fails it, as does a lost connection.
                    confirm = asyncio.ensure_future(
                        publisher.default_exchange.publish(event.copy(), queue, mandatory=True)
                    )
                in_flight.append((event, selected, confirm))
                await settle(keep=IN_FLIGHT)
        await settle(keep=0)
    except LogLost as exc:
        count_confirmed()
        raise BackfillStopped(outcome, exc.cause) from exc
    # OSError covers timeouts and lost sockets; a channel closed under us is a
    # ChannelInvalidStateError (a RuntimeError).
    except (AMQPError, OSError, ChannelInvalidStateError) as exc:
        count_confirmed()
        raise BackfillStopped(outcome, exc) from exc
    except asyncio.CancelledError:  # Ctrl-C: the caller records what was copied
        count_confirmed()
        raise
    finally:
        for _, _, confirm in in_flight:  # after a failure: not counted, copied again on resume
            if confirm is not None and not confirm.done():
                confirm.cancel()
        if in_flight:
            await asyncio.gather(*(c for _, _, c in in_flight if c), return_exceptions=True)
        if publisher is not None:
            await close_quietly(publisher)
    return outcome
