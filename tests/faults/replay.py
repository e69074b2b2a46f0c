"""Parking real messages in a dead-letter queue with an outage, and replaying them.

"Fixable poison": while the Production Service is down for longer than the retry
schedule, the `OrderPaid` of a few fresh, real orders exhausts its attempts and is
dead-lettered as transient. After the outage the test replays exactly those messages
(with the operators' replay code, `operations.dlq.replay`) and the checker verifies each
was then applied exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import aio_pika
import httpx

from tests.faults.chaos import Tap, Workload
from tests.faults.checker import DeadLetter, Fixable
from tests.faults.collect import peek_dead_letters
from tests.faults.system import FaultSystem
from tests.support.polling import eventually
from tests.support.system import outage


async def replay_ids(
    connection: aio_pika.abc.AbstractConnection, system: FaultSystem, key: str, ids: list[str]
) -> list[str]:
    """Replay `ids` from the dead-letter queue of `key`; return the ids replayed."""
    queue = system.topology.queues[key]
    try:
        from operations.dlq.replay import replay
        from operations.dlq.selection import Selection
    except ImportError:  # the operators' replay is not there: move them back ourselves
        return await _move_back(connection, queue.name, queue.dlq, set(ids))
    outcome = await replay(connection, queue, Selection.of(ids))
    return [i for i in outcome.message_ids if i]


async def _move_back(
    connection: aio_pika.abc.AbstractConnection, name: str, dlq: str, ids: set[str]
) -> list[str]:
    moved = []
    channel = await connection.channel(publisher_confirms=True)
    try:
        queue = await channel.declare_queue(dlq, passive=True)
        for _ in range(queue.declaration_result.message_count or 0):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            if message.message_id not in ids:
                continue  # left unacked: back to the queue when the channel closes
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if k not in ("x-attempts", "x-death")
            }
            headers["x-replayed-at"] = datetime.now(UTC).isoformat()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    message_id=message.message_id,
                    correlation_id=message.correlation_id,
                    type=message.type,
                    content_type=message.content_type,
                    timestamp=message.timestamp,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                name,
            )
            await message.ack()
            moved.append(str(message.message_id))
    finally:
        await channel.close()
    return moved


async def park_and_replay(
    system: FaultSystem,
    workload: Workload,
    tap: Tap,
    client: httpx.AsyncClient,
    connection: aio_pika.abc.AbstractConnection,
    *,
    count: int = 3,
    key: str = "production",
) -> list[Fixable]:
    """Check out `count` fresh orders while `key`'s service is down, until their
    OrderPaid is dead-lettered there; bring the service back and replay them."""
    dlq = system.topology.queues[key].dlq
    service = {"production": "production", "email": "emails"}[key]
    async with outage(client, service, mocks=system.mocks):
        plans = [await workload.place(client, "normal", tag="fixable") for _ in range(count)]
        for plan in plans:
            await workload.checkout(client, plan)

        async def parked() -> dict[str, tuple[str, DeadLetter]] | None:
            ids = {}
            for plan in plans:
                message = tap.order_paid(plan.order_id)
                if message is None or message.message_id is None:
                    return None
                ids[message.message_id] = plan.order_id
            letters = {
                d.message_id: d
                for d in await peek_dead_letters(connection, system.topology)
                if d.dlq == dlq and d.message_id in ids
            }
            if set(letters) != set(ids):
                return None
            return {m: (ids[m], letters[m]) for m in ids}

        result = await eventually(
            parked, timeout=90, interval=0.5, what=f"{count} OrderPaid parked in {dlq}"
        )
    found: dict[str, tuple[str, DeadLetter]] = result or {}
    replayed = set(await replay_ids(connection, system, key, list(found)))
    return [
        Fixable(message_id, order_id, key, dlq, letter, message_id in replayed)
        for message_id, (order_id, letter) in found.items()
    ]
