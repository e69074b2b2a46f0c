"""`dlq list` and `dlq show`: depths and messages, read without removing anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractConnection

from infra.messaging.topology import ConsumedQueue, Topology
from operations.dlq.letters import DeadLetter
from operations.dlq.reading import depth, reading


@dataclass(frozen=True)
class QueueDepth:
    """One dead-letter queue and how many messages wait in it."""

    queue: str
    dlq: str
    messages: int

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "dlq": self.dlq, "messages": self.messages}


@dataclass(frozen=True)
class Peek:
    """The first messages of a dead-letter queue, and its depth when they were read."""

    queue: ConsumedQueue
    depth: int
    letters: list[DeadLetter]


async def depths(connection: AbstractConnection, topology: Topology) -> list[QueueDepth]:
    """Every dead-letter queue of the namespace with its number of messages."""
    return [
        QueueDepth(q.name, q.dlq, await depth(connection, q.dlq)) for q in topology.queues.values()
    ]


async def peek(connection: AbstractConnection, queue: ConsumedQueue, limit: int) -> Peek:
    """The first `limit` messages of `queue`'s dead-letter queue; all of them stay there."""
    async with reading(connection, queue.dlq) as reader:
        letters = [DeadLetter.of(m) async for m in reader.messages(limit)]
    return Peek(queue, reader.depth, letters)
