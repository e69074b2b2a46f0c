"""Reading a dead-letter queue without removing what is read.

Messages are taken with `basic.get` and not acked, on a channel of their own. When
that channel closes, RabbitMQ returns every message still unacked to the queue at
its old position, so the queue keeps its order (a classic queue does so; the
dead-letter queues are classic). The caller acks what it means to remove; a crash
closes the channel as well, so nothing read is ever lost.

The walk stops at the depth the queue had when reading began: a message that
arrives meanwhile is left for the next operation rather than chased.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelNotFoundEntity

from operations.channels import close_quietly
from operations.dlq.errors import QueueNotDeclared


@dataclass(frozen=True)
class Reader:
    """A queue opened for reading; `depth` is its number of ready messages at the start."""

    queue: AbstractQueue
    depth: int

    async def messages(self, limit: int | None = None) -> AsyncIterator[AbstractIncomingMessage]:
        """Up to `limit` (at most `depth`) messages, oldest first, unacked."""
        count = self.depth if limit is None else min(limit, self.depth)
        for _ in range(count):
            message = await self.queue.get(no_ack=False, fail=False)
            if message is None:  # someone else took the rest
                return
            yield message


@asynccontextmanager
async def reading(connection: AbstractConnection, name: str) -> AsyncIterator[Reader]:
    """Open `name` for reading; on exit, every message not acked goes back, in order."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            queue = await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity:
            raise QueueNotDeclared(name) from None
        yield Reader(queue, queue.declaration_result.message_count or 0)
    finally:
        # A close that fails means the connection is gone, which returns the
        # messages just as well.
        await close_quietly(channel)


async def depth(connection: AbstractConnection, name: str) -> int:
    """The number of ready messages in `name`."""
    async with reading(connection, name) as reader:
        return reader.depth


async def ensure_declared(connection: AbstractConnection, name: str) -> None:
    """Raise `QueueNotDeclared` unless the queue exists."""
    async with reading(connection, name):
        pass
