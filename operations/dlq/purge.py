"""`dlq purge`: drop the selected messages of a dead-letter queue, leave the rest in order."""

from __future__ import annotations

from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError

from infra.messaging.topology import ConsumedQueue
from operations.dlq.errors import Interrupted
from operations.dlq.outcome import Outcome, Progress
from operations.dlq.reading import reading
from operations.dlq.selection import Selection


async def purge(
    connection: AbstractConnection,
    queue: ConsumedQueue,
    selection: Selection,
    *,
    on_progress: Progress | None = None,
) -> Outcome:
    """Ack (so remove) the selected messages of `queue.dlq`.

    Message by message rather than `queue.purge`, even for all of them: the audit log
    names every message dropped, and one that arrives meanwhile is not dropped unseen.

    Raises:
        QueueNotDeclared: the dead-letter queue does not exist.
        Interrupted: the broker failed part-way; its outcome says what was dropped.
    """
    outcome = Outcome("purge", queue)
    async with reading(connection, queue.dlq) as reader:
        outcome.total = reader.depth
        try:
            async for message in reader.messages():
                if selection.matches(message.message_id):
                    await message.ack()
                    outcome.message_ids.append(message.message_id)
                outcome.scanned += 1
                if on_progress is not None:
                    on_progress(outcome)
        except (AMQPError, OSError) as exc:  # OSError covers timeouts and lost sockets
            raise Interrupted(outcome, exc) from exc
    outcome.missing = selection.missing(outcome.message_ids)
    return outcome
