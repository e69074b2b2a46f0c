"""The dead-letter operations of `operations.dlq` called directly, as an HTTP endpoint would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aio_pika
import pytest

from infra.db.session import UnitOfWork
from infra.messaging.topology import ConsumedQueue, Topology
from infra.settings import Settings
from operations.dlq import audit, inspect
from operations.dlq.errors import Interrupted, QueueNotDeclared
from operations.dlq.operations import purge_recorded, replay_recorded
from operations.dlq.selection import Selection
from tests.support.amqp import depth, take

pytestmark = pytest.mark.integration


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(settings.rabbit_url.get_secret_value())
    yield connection
    await connection.close()


async def put(channel: aio_pika.abc.AbstractChannel, queue: str, message: aio_pika.Message) -> None:
    await channel.default_exchange.publish(message, queue, mandatory=True)


def message(message_id: str, **properties: object) -> aio_pika.Message:
    return aio_pika.Message(b'{"n": 1}', message_id=message_id, **properties)  # type: ignore[arg-type]


async def test_replay_keeps_every_property_but_expiry_and_drops_the_brokers_headers(
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    purge_queues: Topology,
    uow: UnitOfWork,
) -> None:
    queue = purge_queues.queues["production"]
    message_id = str(uuid.uuid4())
    sent_at = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    await put(
        channel,
        queue.dlq,
        message(
            message_id,
            correlation_id="c-1",
            type="OrderPaid",
            content_type="text/plain",
            content_encoding="utf-8",
            priority=3,
            reply_to="somewhere",
            app_id="relay",
            timestamp=sent_at,
            expiration=60,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={
                "x-attempts": 2,
                "x-replay-count": 1,
                "x-death": [{"count": 1}],
                "x-delivery-count": 20,
                "x-error-type": "PermanentFailure",
            },
        ),
    )

    outcome = await replay_recorded(connection, uow, queue, Selection.every(), actor="t")

    assert outcome.message_ids == [message_id]
    [copy] = await take(channel, queue.name, 1)
    assert (copy.message_id, copy.correlation_id, copy.type) == (message_id, "c-1", "OrderPaid")
    assert (copy.content_type, copy.content_encoding) == ("text/plain", "utf-8")
    assert (copy.priority, copy.reply_to, copy.app_id) == (3, "somewhere", "relay")
    assert copy.timestamp == sent_at
    assert copy.expiration is None
    assert copy.body == b'{"n": 1}'
    headers = dict(copy.headers)
    # The quorum queue adds its own count of this copy's deliveries; the old one is gone.
    assert headers.pop("x-delivery-count", 0) == 0
    assert headers == {
        "x-replay-count": 2,
        "x-replayed-at": headers["x-replayed-at"],
        "x-error-type": "PermanentFailure",
    }


async def test_every_copy_of_a_selected_id_is_taken(
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    purge_queues: Topology,
    uow: UnitOfWork,
) -> None:
    queue = purge_queues.queues["invoice"]
    twice, other = str(uuid.uuid4()), str(uuid.uuid4())
    for message_id in (twice, other, twice):
        await put(channel, queue.dlq, message(message_id))

    outcome = await purge_recorded(
        connection, uow, queue, Selection.of([twice]), actor="t", reason="duplicates"
    )

    assert outcome.message_ids == [twice, twice]
    assert [m.message_id for m in await take(channel, queue.dlq, 1)] == [other]


async def test_depths_of_a_namespace_never_declared_say_so(
    connection: aio_pika.abc.AbstractConnection, settings: Settings
) -> None:
    with pytest.raises(QueueNotDeclared, match="never_declared"):
        await inspect.depths(connection, Topology(f"{settings.namespace}_never_declared", (100,)))


@pytest.fixture
async def full_queue(
    settings: Settings, channel: aio_pika.abc.AbstractChannel
) -> AsyncIterator[ConsumedQueue]:
    """A queue that takes one message and refuses the next (the broker nacks it)."""
    queue = ConsumedQueue(f"{settings.namespace}_dlq_full", "", (), (100,))
    await channel.declare_queue(
        queue.name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await channel.declare_queue(queue.dlq)
    yield queue
    await channel.queue_delete(queue.name)
    await channel.queue_delete(queue.dlq)


async def test_a_replay_the_broker_interrupts_is_recorded_with_what_it_did(
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    full_queue: ConsumedQueue,
    uow: UnitOfWork,
    clean_db: object,
) -> None:
    sent = [str(uuid.uuid4()) for _ in range(3)]
    for message_id in sent:
        await put(channel, full_queue.dlq, message(message_id))

    with pytest.raises(Interrupted) as info:
        await replay_recorded(
            connection, uow, full_queue, Selection.every(), actor="carol", reason="retry"
        )

    assert info.value.outcome.message_ids == sent[:1]
    [entry] = await audit.history(uow)
    assert (entry.actor, entry.action, entry.outcome) == ("carol", "replay", "interrupted")
    assert entry.message_ids == sent[:1]
    assert await depth(channel, full_queue.name) == 1
    assert [m.message_id for m in await take(channel, full_queue.dlq, 2)] == sent[1:]


@pytest.mark.parametrize("action", ["replay", "purge"])
async def test_an_operation_that_finds_none_of_its_ids_is_recorded_as_not_completed(
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    purge_queues: Topology,
    uow: UnitOfWork,
    clean_db: object,
    action: str,
) -> None:
    queue = purge_queues.queues["invoice"]
    present, absent = str(uuid.uuid4()), str(uuid.uuid4())
    await put(channel, queue.dlq, message(present))
    operation = replay_recorded if action == "replay" else purge_recorded

    outcome = await operation(connection, uow, queue, Selection.of([absent]), actor="dan")

    assert (outcome.message_ids, outcome.missing) == ([], [absent])
    [entry] = await audit.history(uow)
    assert (entry.action, entry.messages, entry.missing) == (action, 0, [absent])
    assert entry.outcome == "incomplete"
    assert await depth(channel, queue.name) == 0
    assert [m.message_id for m in await take(channel, queue.dlq, 1)] == [present]


async def test_an_operation_that_finds_every_id_it_was_asked_for_is_completed(
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    purge_queues: Topology,
    uow: UnitOfWork,
    clean_db: object,
) -> None:
    queue = purge_queues.queues["invoice"]
    wanted = [str(uuid.uuid4()), str(uuid.uuid4())]
    for message_id in wanted:
        await put(channel, queue.dlq, message(message_id))

    await purge_recorded(connection, uow, queue, Selection.of(wanted), actor="dan")
    await purge_recorded(connection, uow, queue, Selection.every(), actor="dan")  # an empty queue

    assert [(e.messages, e.missing, e.outcome) for e in await audit.history(uow)] == [
        (0, [], "completed"),
        (2, [], "completed"),
    ]


async def test_what_a_read_gave_back_is_there_for_the_next_operation_at_once(
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    purge_queues: Topology,
    uow: UnitOfWork,
) -> None:
    """A quorum queue takes back what a closed channel held a moment after the close:
    `dlq show` then a purge (or a console page, then its button) once found nothing, on
    a loaded machine. Hundreds of messages make that moment longer."""
    queue = purge_queues.queues["email"]
    ids = [str(uuid.uuid4()) for _ in range(300)]
    for message_id in ids:
        await put(channel, queue.dlq, message(message_id))
    for round_ in range(3):
        shown = await inspect.peek(connection, queue, 300)
        assert sorted(letter.message_id for letter in shown.letters) == sorted(ids), round_
    outcome = await purge_recorded(
        connection, uow, queue, Selection.of(ids[:1]), actor="t", reason="right after show"
    )
    assert outcome.message_ids == ids[:1]
    assert outcome.missing == []
