"""What the system is doing now, for the console's overview: one read of each source.

- checkouts (and cancellations, once that table exists) by state, and how many are
  not final for longer than `STUCK_AFTER`;
- the outbox backlog and its oldest row's age (the relay is down, or behind);
- each consumed queue's depth and consumers, and its dead-letter queue's depth.

The database part and the broker part are read independently: one being down shows
as such on the page and does not hide the other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError
from aiormq.exceptions import ChannelNotFoundEntity

from infra.db.session import UnitOfWork
from infra.messaging.topology import Topology

STUCK_AFTER = timedelta(minutes=5)
FINAL_CHECKOUT = ("PAID", "FAILED")
FINAL_CANCELLATION = ("CANCELLED", "REJECTED")

_BY_STATE = "SELECT state, count(*) FROM {table} GROUP BY state ORDER BY state"
_STUCK = "SELECT count(*) FROM {table} WHERE state <> ALL(%s) AND updated_at < now() - %s"
_OUTBOX = "SELECT count(*), now() - min(created_at) FROM outbox"
_HAS_TABLE = "SELECT to_regclass(%s) IS NOT NULL"


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
    queues: list[QueueStatus] = field(default_factory=list)
    database_error: str | None = None
    broker_error: str | None = None


async def saga_counts(uow: UnitOfWork) -> tuple[list[SagaCounts], int, timedelta | None]:
    """Checkouts and cancellations by state, and the outbox backlog with its oldest age."""
    counts = []
    async with uow.reads() as conn:
        for table, final in (("checkouts", FINAL_CHECKOUT), ("cancellations", FINAL_CANCELLATION)):
            # `cancellations` arrives with the cancellation saga's migration.
            exists = await (await conn.execute(_HAS_TABLE, (table,))).fetchone()
            if not exists or not exists[0]:
                continue
            rows = await (await conn.execute(_BY_STATE.format(table=table))).fetchall()
            stuck = await (
                await conn.execute(_STUCK.format(table=table), (list(final), STUCK_AFTER))
            ).fetchone()
            counts.append(
                SagaCounts(table, {state: n for state, n in rows}, stuck[0] if stuck else 0)
            )
        backlog = await (await conn.execute(_OUTBOX)).fetchone()
    rows_pending, oldest = backlog if backlog else (0, None)
    return counts, rows_pending, oldest


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
        with contextlib.suppress(AMQPError, OSError):
            if not channel.is_closed:
                await channel.close()
    return statuses
