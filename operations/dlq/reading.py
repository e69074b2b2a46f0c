"""Reading a dead-letter queue without removing what is read.

Messages are taken with `basic.get` and not acked, on a channel of their own. When
that channel closes, RabbitMQ returns every message still unacked to the queue, ahead
of the rest (a quorum queue keeps their order for a few; of hundreds returned at once,
measured here, not always). The caller acks what it means to remove; a crash closes the
channel as well, so nothing read is ever lost.

A quorum queue (as the dead-letter queues are) takes the returned messages back a
moment after the channel's close is confirmed: a read followed at once by another (a
`dlq show` then a replay, a console page then its button) could find them missing.
So `reading` waits, after the close, until the queue counts them again (at most
`RETURN_WAIT_S`).

The walk stops at the depth the queue had when reading began: a message that
arrives meanwhile is left for the next operation rather than chased.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import AMQPError
from aiormq.exceptions import ChannelNotFoundEntity

from operations.channels import close_quietly
from operations.dlq.errors import QueueNotDeclared

# How long `reading` waits, after its channel closed, for the queue to count the
# messages it gave back; past it, the next read may still miss them for a moment.
RETURN_WAIT_S = 5.0


@dataclass
class Reader:
    """A queue opened for reading; `depth` is its number of ready messages at the start."""

    queue: AbstractQueue
    depth: int
    taken: list[AbstractIncomingMessage] = field(default_factory=list)

    async def messages(self, limit: int | None = None) -> AsyncIterator[AbstractIncomingMessage]:
        """Up to `limit` (at most `depth`) messages, oldest first, unacked."""
        count = self.depth if limit is None else min(limit, self.depth)
        for _ in range(count):
            message = await self.queue.get(no_ack=False, fail=False)
            if message is None:  # someone else took the rest
                return
            self.taken.append(message)
            yield message

    @property
    def removed(self) -> int:
        """How many of the messages read the caller acked (or settled otherwise)."""
        return sum(1 for message in self.taken if message.processed)


@asynccontextmanager
async def reading(connection: AbstractConnection, name: str) -> AsyncIterator[Reader]:
    """Open `name` for reading; on exit, every message not acked goes back, and is
    counted by the queue again before this returns."""
    channel = await connection.channel(publisher_confirms=False)
    reader: Reader | None = None
    try:
        try:
            queue = await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity:
            raise QueueNotDeclared(name) from None
        reader = Reader(queue, queue.declaration_result.message_count or 0)
        yield reader
    finally:
        # A close that fails means the connection is gone, which returns the
        # messages just as well.
        await close_quietly(channel)
        if reader is not None and len(reader.taken) > reader.removed:
            await _until_back(connection, name, reader.depth - reader.removed)


async def _until_back(connection: AbstractConnection, name: str, at_least: int) -> None:
    """Until `name` has `at_least` ready messages again, for at most `RETURN_WAIT_S`.
    (New arrivals only add to the count; nobody else consumes a dead-letter queue.)"""
    deadline = time.monotonic() + RETURN_WAIT_S
    with contextlib.suppress(AMQPError, OSError, ChannelNotFoundEntity):
        channel = await connection.channel(publisher_confirms=False)
        try:
            while True:
                queue = await channel.declare_queue(name, passive=True)
                ready = queue.declaration_result.message_count or 0
                if ready >= at_least or time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.02)
        finally:
            await close_quietly(channel)


async def depth(connection: AbstractConnection, name: str) -> int:
    """The number of ready messages in `name`."""
    async with reading(connection, name) as reader:
        return reader.depth


async def ensure_declared(connection: AbstractConnection, name: str) -> None:
    """Raise `QueueNotDeclared` unless the queue exists."""
    async with reading(connection, name):
        pass
