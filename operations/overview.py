"""What the system is doing now, for the console's overview: one read of each source.

- checkouts and cancellations by state, and how many are not final for longer than
  `STUCK_AFTER` (counted as `checkout stuck` counts them: `operations.stuck.count_stuck`);
- refunds by status;
- the outbox backlog and its oldest row's age (the relay is down, or behind);
- each consumed queue's depth and consumers, and its dead-letter queue's depth.

The database part and the broker part are read independently: one being down shows
as such on the page and does not hide the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelNotFoundEntity
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.messaging.topology import Topology
from operations.channels import close_quietly
from operations.stuck import DEFAULT_OLDER_THAN, count_stuck

STUCK_AFTER = DEFAULT_OLDER_THAN

_BY_STATE = {
    "checkouts": "SELECT state, count(*) FROM checkouts GROUP BY state ORDER BY state",
    "cancellations": "SELECT state, count(*) FROM cancellations GROUP BY state ORDER BY state",
}
_REFUNDS = "SELECT status, count(*) FROM refunds GROUP BY status ORDER BY status"
_OUTBOX = "SELECT count(*), now() - min(created_at), now() FROM outbox"
# The stuck counts' kind (`operations.stuck`) of each table.
_KIND = {"checkouts": "checkout", "cancellations": "cancellation"}


@dataclass(frozen=True)
class SagaCounts:
    """One kind of saga (checkouts, cancellations): how many in each state, how many stuck."""

    kind: str
    by_state: dict[str, int]
    stuck: int

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


@dataclass(frozen=True)
class QueueStatus:
    """A consumed queue: messages ready, consumers attached, and its dead-letter depth."""

    name: str
    dlq: str
    messages: int | None  # None: the queue is not declared
    consumers: int | None
    dead_letters: int | None


@dataclass(frozen=True)
class Overview:
    """Everything the overview page shows; `database_error`/`broker_error` say what failed."""

    generated_at: datetime
    sagas: list[SagaCounts] = field(default_factory=list)
    outbox_rows: int | None = None
    outbox_oldest_age: timedelta | None = None
    refunds: dict[str, int] = field(default_factory=dict)
    queues: list[QueueStatus] = field(default_factory=list)
    database_error: str | None = None
    broker_error: str | None = None


@dataclass(frozen=True)
class Counts:
    """The database's part of the overview."""

    sagas: list[SagaCounts]
    refunds: dict[str, int]
    outbox_rows: int
    outbox_oldest_age: timedelta | None


async def saga_counts(engine: AsyncEngine) -> Counts:
    """Checkouts and cancellations by state with their stuck counts, refunds by status,
    and the outbox backlog with its oldest row's age."""
    async with engine.connect() as conn:
        rows, oldest, now = (await conn.execute(text(_OUTBOX))).one()
        stuck = await count_stuck(conn, now, STUCK_AFTER)
        sagas = []
        for table, statement in _BY_STATE.items():
            by_state = {state: n for state, n in (await conn.execute(text(statement))).all()}
            kind = _KIND[table]
            stuck_here = sum(n for (k, _), n in stuck.items() if k == kind)
            sagas.append(SagaCounts(table, by_state, stuck_here))
        refunds = {status: n for status, n in (await conn.execute(text(_REFUNDS))).all()}
    return Counts(sagas, refunds, int(rows), oldest)


async def queue_status(connection: AbstractConnection, topology: Topology) -> list[QueueStatus]:
    """Each consumed queue's depth and consumers, and its dead-letter queue's depth."""
    statuses = []
    channel = await connection.channel(publisher_confirms=False)
    try:
        for queue in topology.queues.values():
            messages = consumers = dead = None
            # A passive declare of a missing queue closes the channel: reopen it.
            try:
                declared = await channel.declare_queue(queue.name, passive=True)
                messages = declared.declaration_result.message_count
                consumers = declared.declaration_result.consumer_count
            except ChannelNotFoundEntity:
                channel = await connection.channel(publisher_confirms=False)
            try:
                dlq = await channel.declare_queue(queue.dlq, passive=True)
                dead = dlq.declaration_result.message_count
            except ChannelNotFoundEntity:
                channel = await connection.channel(publisher_confirms=False)
            statuses.append(QueueStatus(queue.name, queue.dlq, messages, consumers, dead))
    finally:
        await close_quietly(channel)
    return statuses
