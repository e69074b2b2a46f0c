"""Small helpers for reading what reached a queue in tests."""

from __future__ import annotations

import asyncio
import time

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from infra.messaging.topology import Topology


async def take(
    channel: AbstractChannel, queue: str, count: int, *, timeout: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Get `count` messages from `queue` (acking them), polling until `timeout`."""
    found: list[AbstractIncomingMessage] = []
    target = await channel.get_queue(queue, ensure=False)
    deadline = time.monotonic() + timeout
    while len(found) < count:
        message = await target.get(no_ack=True, fail=False)
        if message is not None:
            found.append(message)
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue}: got {len(found)} of {count} messages in {timeout}s")
        await asyncio.sleep(0.02)
    return found


async def depth(channel: AbstractChannel, queue: str) -> int:
    """The queue's message count now, from a passive declare on the wire.

    Not `channel.declare_queue(passive=True)`: a robust channel answers that from its
    cache of declared queues, with the count of the first declare, forever.
    """
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(queue, passive=True)
    return declared.message_count or 0


async def private_queue(
    channel: AbstractChannel, exchange: str, routing_key: str
) -> aio_pika.abc.AbstractQueue:
    """An exclusive, auto-deleted queue bound to `exchange`: a stand-in downstream team."""
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key)
    return queue


async def purge_all(channel: AbstractChannel, topology: Topology) -> None:
    """Empty every queue of the run's namespace: each consumed queue, its dead-letter
    queue and its wait queues (not the event log: a stream cannot be purged)."""
    names: list[str] = []
    for q in topology.queues.values():
        names += [q.name, q.dlq] + [f"{q.name}.wait.{d}" for d in set(q.retry_delays_ms)]
    for name in names:
        await (await channel.get_queue(name)).purge()
