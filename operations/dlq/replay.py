"""`dlq replay`: send dead-lettered messages back to the queue they came from.

The copy goes through the default exchange with the queue's own name as routing key,
not through the topic exchange, so the other queues bound to the same key do not see
the message a second time. It keeps the body and the properties, and gets its full
number of attempts again: `x-attempts` is removed (a consumer counts from it), while
the failure headers stay as history, next to `x-replay-count` and `x-replayed-at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError

from infra.messaging import failures
from infra.messaging.copies import copy_of
from infra.messaging.topology import ConsumedQueue
from operations.channels import close_quietly
from operations.dlq.errors import Interrupted
from operations.dlq.outcome import Outcome, Progress
from operations.dlq.pacing import Pacer
from operations.dlq.reading import ensure_declared, reading
from operations.dlq.selection import Selection

REPLAY_COUNT = "x-replay-count"
REPLAYED_AT = "x-replayed-at"


def replay_headers(headers: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The headers of a replayed copy: attempts reset, failure history kept, replay noted."""
    kept = {
        k: v
        for k, v in headers.items()
        if k not in failures.BROKER_HEADERS and k != failures.ATTEMPTS
    }
    previous = headers.get(REPLAY_COUNT)
    kept[REPLAY_COUNT] = (previous if isinstance(previous, int) else 0) + 1
    kept[REPLAYED_AT] = now.isoformat()
    return kept


def replay_copy(message: AbstractIncomingMessage, now: datetime) -> aio_pika.Message:
    """The message to publish for `message`: same body and properties, new headers.

    Left out: `expiration` (a replayed message must not vanish before it is handled)
    and `user_id` (the broker requires it to name whoever publishes, now the operator).
    """
    return copy_of(
        message,
        replay_headers(message.headers or {}, now),
        message.delivery_mode or aio_pika.DeliveryMode.PERSISTENT,
    )


async def replay(
    connection: AbstractConnection,
    queue: ConsumedQueue,
    selection: Selection,
    *,
    rate: float | None = None,
    dry_run: bool = False,
    on_progress: Progress | None = None,
    pacer: Pacer | None = None,
) -> Outcome:
    """Move the selected messages of `queue.dlq` back to `queue`, in their order.

    Args:
        rate: at most this many messages a second (no limit when None).
        dry_run: select and report, move nothing.
        on_progress: called after each message looked at.
    Raises:
        QueueNotDeclared: the queue or its dead-letter queue does not exist.
        Interrupted: the broker failed part-way; its outcome says what was replayed.
    """
    outcome = Outcome("replay", queue, dry_run=dry_run)
    pacer = pacer or Pacer(rate)
    await ensure_declared(connection, queue.name)
    async with reading(connection, queue.dlq) as reader:
        outcome.total = reader.depth
        publisher = None
        try:
            if not dry_run:
                publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
            async for message in reader.messages():
                message_id = message.message_id
                if selection.matches(message_id):
                    if publisher is not None:
                        await pacer.wait()
                        await publisher.default_exchange.publish(
                            replay_copy(message, datetime.now(UTC)), queue.name, mandatory=True
                        )
                        # Acked only once the broker confirmed the copy: a crash in between
                        # leaves the message in both queues (consumers de-duplicate by
                        # message_id), never in neither.
                        await message.ack()
                    outcome.message_ids.append(message_id)
                outcome.scanned += 1
                if on_progress is not None:
                    on_progress(outcome)
        except (AMQPError, OSError) as exc:  # OSError covers timeouts and lost sockets
            raise Interrupted(outcome, exc) from exc
        finally:
            if publisher is not None:
                await close_quietly(publisher)
    outcome.missing = selection.missing(outcome.message_ids)
    return outcome
