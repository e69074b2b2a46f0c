"""The event log in the topology: a stream bound to `order.#`, retention, the old journal."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed

from infra.messaging.event_log import retire_journal, stream_arguments
from infra.messaging.topology import Topology, declare_topology, delete_topology
from infra.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def own_topology(
    settings: Settings, rabbit: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[Topology]:
    """A namespace of this test's own, declared with a 7-day log, removed after."""
    topology = Topology(f"{settings.namespace}.evt{uuid.uuid4().hex[:6]}", (200,), 7)
    channel = await rabbit.channel()
    await declare_topology(channel, topology)
    yield topology
    channel = await rabbit.channel()
    await channel.queue_delete(topology.journal_queue)
    await delete_topology(channel, topology)
    await channel.close()


async def test_the_log_is_a_stream_with_the_configured_retention(
    own_topology: Topology, rabbit: aio_pika.abc.AbstractRobustConnection
) -> None:
    channel = await rabbit.channel()
    # Declaring with the same arguments succeeds only if the stream has exactly them.
    await channel.declare_queue(own_topology.event_log, durable=True, arguments=stream_arguments(7))
    with pytest.raises(ChannelPreconditionFailed, match="x-max-age"):
        await channel.declare_queue(
            own_topology.event_log, durable=True, arguments=stream_arguments(8)
        )


async def test_a_changed_retention_does_not_stop_a_part_declaring_the_topology(
    own_topology: Topology, rabbit: aio_pika.abc.AbstractRobustConnection
) -> None:
    channel = await rabbit.channel()
    changed = Topology(own_topology.namespace, own_topology.retry_delays_ms, 30)
    await declare_topology(channel, changed)  # warns, keeps the stream as it is
    assert not channel.is_closed
    # Still bound: an event with a key no consumer has is routable (mandatory publish).
    confirmed = await rabbit.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await confirmed.get_exchange(own_topology.orders_exchange)
    await exchange.publish(
        aio_pika.Message(b"{}", message_id=str(uuid.uuid4())),
        "order.nobody_listens",
        mandatory=True,
    )


async def test_an_empty_journal_is_removed(
    own_topology: Topology, rabbit: aio_pika.abc.AbstractRobustConnection
) -> None:
    channel = await rabbit.channel()
    journal = await channel.declare_queue(own_topology.journal_queue, durable=True)
    await journal.bind(own_topology.orders_exchange, "order.#")

    note = await retire_journal(rabbit, own_topology.journal_queue, own_topology.orders_exchange)

    assert note is not None
    assert "removed" in note
    fresh = await rabbit.channel()  # a robust channel answers a passive declare from memory
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await fresh.declare_queue(own_topology.journal_queue, passive=True)
    # Nothing to do the second time.
    assert (
        await retire_journal(rabbit, own_topology.journal_queue, own_topology.orders_exchange)
        is None
    )


async def test_a_journal_with_events_is_unbound_and_kept_with_a_note(
    own_topology: Topology, rabbit: aio_pika.abc.AbstractRobustConnection
) -> None:
    channel = await rabbit.channel(publisher_confirms=True)
    journal = await channel.declare_queue(own_topology.journal_queue, durable=True)
    await journal.bind(own_topology.orders_exchange, "order.#")
    exchange = await channel.get_exchange(own_topology.orders_exchange)
    await exchange.publish(aio_pika.Message(b"old"), "order.paid")

    note = await retire_journal(rabbit, own_topology.journal_queue, own_topology.orders_exchange)

    assert note is not None
    assert "holds 1 event from before" in note
    assert f"rabbitmqctl delete_queue {own_topology.journal_queue}" in note
    await exchange.publish(aio_pika.Message(b"new"), "order.paid")  # no longer reaches it
    fresh = await rabbit.channel()  # a robust channel answers a passive declare from memory
    kept = await fresh.declare_queue(own_topology.journal_queue, passive=True)
    assert kept.declaration_result.message_count == 1
