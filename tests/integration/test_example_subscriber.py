"""The downstream guide's example subscriber, against the real broker in this run's namespace.

It binds its own queue to `{ns}.orders` (declared by the `topology` fixture); the
tests publish as the outbox relay does (`Publisher` + `Outgoing.of`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aio_pika
import pytest

from contracts import SCHEMA_VERSION_HEADER, Customer, OrderPaid
from examples.order_paid_subscriber import (
    Delivery,
    SeenIds,
    Stats,
    SubscriberConfig,
    subscribe,
)
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import Topology
from infra.settings import Settings
from tests.support.amqp import take
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "order_paid_subscriber.py"


def an_order_paid() -> OrderPaid:
    return OrderPaid(
        order_id=uuid.uuid4(),
        checkout_id=uuid.uuid4(),
        payment_id=uuid.uuid4(),
        order_name="Poster A2",
        amount=Decimal("19.90"),
        currency="EUR",
        customer=Customer(email="jane@example.com", name="Jane"),
        paid_at=datetime.now(UTC),
    )


def outgoing(event: OrderPaid, topology: Topology, **headers: object) -> Outgoing:
    return Outgoing.of(
        event,
        exchange=topology.orders_exchange,
        message_id=uuid.uuid4(),
        correlation_id=event.checkout_id,
        headers=dict(headers),
    )


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[Publisher]:
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    yield publisher
    await publisher.close()


@pytest.fixture
async def queue_config(
    settings: Settings, topology: Topology, rabbit: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[SubscriberConfig]:
    """The example's config in this run's namespace, with a queue of its own; cleaned up.

    The system's own `order.paid` queues get the test's events too: they are purged
    afterwards, so no later test's consumer sees them.
    """
    config = SubscriberConfig(
        rabbit_url=settings.rabbit_url.get_secret_value(),
        namespace=settings.namespace,
        queue=f"{settings.namespace}.example.{uuid.uuid4().hex[:8]}",
    )
    yield config
    channel = await rabbit.channel()
    for name in (config.queue_name, config.parked_queue):
        await channel.queue_delete(name)
    system = [q.name for q in topology.queues.values() if q.exchange == topology.orders_exchange]
    for name in system:
        await (await channel.get_queue(name)).purge()
    await channel.close()


@dataclass
class Running:
    received: list[Delivery] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def subscriber(queue_config: SubscriberConfig) -> AsyncIterator[Running]:
    """The example's core running in this event loop until the test ends."""
    running = Running()
    ready = asyncio.Event()

    async def collect(delivery: Delivery) -> None:
        running.received.append(delivery)

    task = asyncio.create_task(
        subscribe(
            queue_config,
            collect,
            stop=running.stop,
            ready=ready,
            seen=SeenIds(),
            stats=running.stats,
        )
    )

    async def is_ready() -> bool:
        if task.done():
            task.result()  # raise what stopped it
        return ready.is_set()

    await eventually(is_ready, timeout=10, what="the example subscriber to bind its queue")
    yield running
    running.stop.set()
    await asyncio.wait_for(task, timeout=10)


async def test_the_example_receives_order_paid_once_when_delivered_twice(
    subscriber: Running, publisher: Publisher, topology: Topology
) -> None:
    event = an_order_paid()
    message = outgoing(event, topology)
    await publisher.publish(message)
    await publisher.publish(message)  # the same message_id: a redelivery

    async def stats() -> Stats:
        return subscriber.stats

    await eventually(
        stats,
        until=lambda s: s.handled + s.duplicates == 2,
        what="both copies to reach the example subscriber",
    )
    assert (subscriber.stats.handled, subscriber.stats.duplicates) == (1, 1)
    assert subscriber.stats.parked == 0
    [delivery] = subscriber.received
    assert delivery.message_id == str(message.message_id)
    assert delivery.correlation_id == str(event.checkout_id)
    assert delivery.schema_version == 1
    assert delivery.timestamp is not None
    got = delivery.event
    assert (got.order_id, got.checkout_id, got.payment_id) == (
        event.order_id,
        event.checkout_id,
        event.payment_id,
    )
    assert (got.order_name, got.amount, got.currency) == ("Poster A2", Decimal("19.90"), "EUR")
    assert (got.customer.email, got.customer.name) == ("jane@example.com", "Jane")
    assert got.paid_at == event.paid_at


async def test_a_version_the_example_does_not_understand_is_parked(
    subscriber: Running,
    publisher: Publisher,
    topology: Topology,
    queue_config: SubscriberConfig,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    message = outgoing(an_order_paid(), topology, **{SCHEMA_VERSION_HEADER: 2})
    await publisher.publish(message)

    async def stats() -> Stats:
        return subscriber.stats

    await eventually(stats, until=lambda s: s.parked == 1, what="the v2 message to be parked")
    channel = await rabbit.channel()
    [parked] = await take(channel, queue_config.parked_queue, 1)
    await channel.close()
    assert parked.message_id == str(message.message_id)
    assert parked.headers[SCHEMA_VERSION_HEADER] == 2
    assert subscriber.received == []


async def _line(stream: asyncio.StreamReader, containing: str, timeout: float = 15) -> str:
    """The first line of `stream` containing `containing` (fail after `timeout`)."""

    async def find() -> str:
        while line := (await stream.readline()).decode():
            if containing in line:
                return line
        raise AssertionError(f"stream ended before a line with {containing!r}")

    return await asyncio.wait_for(find(), timeout)


async def test_the_example_runs_as_a_script(
    publisher: Publisher, topology: Topology, queue_config: SubscriberConfig
) -> None:
    env = {
        **os.environ,
        "CHECKOUT_RABBIT_URL": queue_config.rabbit_url,
        "CHECKOUT_NAMESPACE": queue_config.namespace,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--queue",
        queue_config.queue_name,
        env=env,
        cwd="/",  # it needs nothing from this repository
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        await _line(process.stderr, "listening on")
        event = an_order_paid()
        await publisher.publish(outgoing(event, topology))
        line = await _line(process.stdout, str(event.order_id))
        assert '"amount": "19.90"' in line
        assert "jane@example.com" not in line
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0
    summary = (await process.stderr.read()).decode()
    assert "1 handled, 0 duplicates, 0 parked" in summary
