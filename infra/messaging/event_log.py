"""The event log: `{ns}.orders.log`, a RabbitMQ stream bound to `order.#`.

Every public event is appended to it as the relay publishes it, and kept for
`CHECKOUT_EVENT_LOG_DAYS` (the stream's `x-max-age`; RabbitMQ drops a whole segment
once every event in it is older). Readers (`checkout events list|backfill`,
`operations.events`) attach at a time or an offset and read without consuming, so
the log also does what the bounded `{ns}.orders.journal` queue did before it: it keeps
every public event routable before any team has bound a queue (the relay publishes
with `mandatory` and treats a return as an error).

A stream's arguments cannot change once it exists: declaring it again with another
`x-max-age` is refused (PRECONDITION_FAILED). A changed `CHECKOUT_EVENT_LOG_DAYS`
therefore does not stop the parts: the stream is kept as it is, with a warning that
names the policy that changes its retention (a policy's `max-age` takes precedence
over the argument).
"""

from __future__ import annotations

import contextlib

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity, ChannelPreconditionFailed
from pamqp.common import FieldTable

log = structlog.get_logger(__name__)

ROUTING_KEY = "order.#"


def max_age(days: int) -> str:
    """The stream's `x-max-age` for `days` days, in RabbitMQ's notation (`30D`)."""
    return f"{days}D"


def stream_arguments(days: int) -> FieldTable:
    return {"x-queue-type": "stream", "x-max-age": max_age(days)}


def retention_policy_command(name: str, days: int) -> str:
    """The `rabbitmqctl` line that sets the stream's retention to `days` days."""
    pattern = "^" + name.replace(".", r"\.") + "$"
    return (
        f"rabbitmqctl set_policy {name}-retention '{pattern}' "
        f'\'{{"max-age":"{max_age(days)}"}}\' --apply-to queues'
    )


async def declare_event_log(
    channel: AbstractChannel, exchange: AbstractExchange, name: str, days: int
) -> None:
    """Declare the stream `name` (durable, `x-max-age` of `days`) and bind it to `order.#`."""
    try:
        stream = await channel.declare_queue(name, durable=True, arguments=stream_arguments(days))
    except ChannelPreconditionFailed as exc:
        # It exists with another retention (or as another queue type): keep it as it
        # is and say how to change it; the refusal closed the channel, so reopen it.
        await channel.reopen()
        stream = await channel.declare_queue(name, passive=True)
        log.warning(
            "event_log.retention_differs",
            queue=name,
            wanted=max_age(days),
            broker=str(exc),
            fix=retention_policy_command(name, days),
        )
    await stream.bind(exchange, routing_key=ROUTING_KEY)


async def retire_journal(connection: AbstractConnection, journal: str, exchange: str) -> str | None:
    """Retire the bounded journal queue the stream replaces; a line for the operator or None.

    Its binding to `order.#` is removed, so it collects nothing more. Empty, it is
    deleted. With messages left (older events, not in the stream), it stays: they expire
    by the queue's own age limit (7 days), after which the next `checkout declare`
    deletes it; an operator who does not need them removes it at once.

    Never fails the declaration it is part of: a broker user without the rights to
    unbind or delete it (the generated permissions no longer name it) gets a warning
    saying how to remove it by hand.
    """
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            queue = await channel.declare_queue(journal, passive=True)
        except ChannelNotFoundEntity:
            return None  # never had one, or already retired
        try:
            await queue.unbind(exchange, routing_key=ROUTING_KEY)
        except AMQPError as exc:
            note = (
                f"the old journal queue {journal} could not be retired ({exc}); the event "
                f"log replaces it: remove it with rabbitmqctl delete_queue {journal}"
            )
            log.warning("event_log.journal_not_retired", queue=journal, note=note)
            return note
        left = queue.declaration_result.message_count or 0
        if left == 0:
            try:
                await channel.queue_delete(journal, if_empty=True)
            except ChannelPreconditionFailed:  # a message came in meanwhile: keep it
                left = 1
            else:
                log.info("event_log.journal_deleted", queue=journal)
                return f"removed the old journal queue {journal} (empty; the event log replaces it)"
        note = (
            f"the old journal queue {journal} holds {left} event{'' if left == 1 else 's'} "
            "from before the event log; "
            "it is unbound and expires within 7 days, after which `checkout declare` "
            f"removes it; to remove it now: rabbitmqctl delete_queue {journal}"
        )
        log.warning("event_log.journal_kept", queue=journal, messages=left, note=note)
        return note
    finally:
        with contextlib.suppress(AMQPError, OSError):
            if not channel.is_closed:
                await channel.close()
