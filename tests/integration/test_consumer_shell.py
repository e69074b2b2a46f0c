"""The consumer shell against the real broker: ack, retry with delays, dead-letter, poison."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import aio_pika
import pytest
from faststream.rabbit import RabbitBroker

from contracts import Customer, OrderPaid
from infra.messaging import failures
from infra.messaging.consumer import Delivery, QueueConsumer, subscribe
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import Topology, declare_topology, delete_topology
from infra.settings import Settings
from tests.support.amqp import depth, take
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


class Recorder:
    """A handler whose behaviour each test sets: fail N times, or always."""

    def __init__(self) -> None:
        self.calls: list[Delivery] = []
        self.fail_with: list[Exception] = []

    async def handle(self, event: OrderPaid, delivery: Delivery) -> None:
        self.calls.append(delivery)
        if self.fail_with:
            raise self.fail_with.pop(0)


@pytest.fixture(scope="module")
async def shell_topology(settings: Settings) -> AsyncIterator[Topology]:
    # Its own namespace: processes of other tests never consume these queues.
    topology = Topology(f"{settings.namespace}_shell", (200, 300, 400))
    connection = await aio_pika.connect(settings.rabbit_url.get_secret_value())
    channel = await connection.channel()
    await declare_topology(channel, topology)
    yield topology
    await delete_topology(channel, topology)
    await connection.close()


@pytest.fixture
async def harness(
    settings: Settings, shell_topology: Topology
) -> AsyncIterator[tuple[Recorder, Publisher, aio_pika.abc.AbstractChannel]]:
    recorder = Recorder()
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    channel = await publisher._connection.channel()
    queue = shell_topology.queues["invoice"]
    for name in (queue.name, queue.dlq):
        await (await channel.get_queue(name)).purge()
    consumer = QueueConsumer(queue, jitter=0.1)
    consumer.bind({OrderPaid: recorder.handle}, publisher)
    broker = RabbitBroker(settings.rabbit_url.get_secret_value())
    subscribe(broker, consumer, prefetch=10)
    await broker.start()
    yield recorder, publisher, channel
    await broker.stop()
    await publisher.close()


def _event() -> OrderPaid:
    return OrderPaid(
        order_id=uuid.uuid4(),
        checkout_id=uuid.uuid4(),
        payment_id=uuid.uuid4(),
        order_name="Poster",
        amount=Decimal("5.00"),
        currency="EUR",
        customer=Customer(email="a@example.com", name="A"),
        paid_at=datetime.now(UTC),
    )


async def _send(
    publisher: Publisher,
    topology: Topology,
    *,
    body: bytes | None = None,
    message_type: str = "OrderPaid",
) -> Outgoing:
    event = _event()
    outgoing = Outgoing(
        exchange=topology.orders_exchange,
        routing_key="order.paid",
        body=body if body is not None else event.model_dump_json().encode(),
        message_id=uuid.uuid4(),
        correlation_id=event.checkout_id,
        message_type=message_type,
        headers={"x-schema-version": 1},
    )
    await publisher.publish(outgoing)
    return outgoing


async def test_success_is_acked_once(harness, shell_topology: Topology) -> None:  # type: ignore[no-untyped-def]
    recorder, publisher, channel = harness
    sent = await _send(publisher, shell_topology)
    await eventually(lambda: _value(len(recorder.calls)), until=lambda n: n == 1, what="handled")
    assert recorder.calls[0].message_id == sent.message_id
    assert recorder.calls[0].attempt == 1
    queue = shell_topology.queues["invoice"]
    await eventually(lambda: depth(channel, queue.name), until=lambda n: n == 0, what="acked")
    assert await depth(channel, queue.dlq) == 0


async def test_permanent_failure_is_dead_lettered_at_once_with_its_reason(  # type: ignore[no-untyped-def]
    harness, shell_topology: Topology
) -> None:
    recorder, publisher, channel = harness
    recorder.fail_with = [failures.PermanentFailure("mailbox bounced")]
    sent = await _send(publisher, shell_topology)
    queue = shell_topology.queues["invoice"]
    [dead] = await take(channel, queue.dlq, 1)
    assert len(recorder.calls) == 1
    assert dead.body == sent.body
    assert dead.message_id == str(sent.message_id)
    assert dead.correlation_id == str(sent.correlation_id)
    assert dead.headers[failures.ORIGINAL_QUEUE] == queue.name
    assert dead.headers[failures.ATTEMPTS] == 1
    assert dead.headers[failures.FAILURE_KIND] == "permanent"
    assert dead.headers[failures.ERROR_TYPE] == "PermanentFailure"
    assert "mailbox bounced" in dead.headers[failures.ERROR_MESSAGE]
    assert dead.headers[failures.FIRST_FAILURE_AT] == dead.headers[failures.LAST_FAILURE_AT]


async def test_transient_failure_is_retried_then_succeeds(
    harness, shell_topology: Topology
) -> None:  # type: ignore[no-untyped-def]
    recorder, publisher, channel = harness
    recorder.fail_with = [failures.TransientFailure("503"), ConnectionError("reset")]
    await _send(publisher, shell_topology)
    await eventually(lambda: _value(len(recorder.calls)), until=lambda n: n == 3, what="retries")
    assert [c.attempt for c in recorder.calls] == [1, 2, 3]
    assert len({c.message_id for c in recorder.calls}) == 1
    assert await depth(channel, shell_topology.queues["invoice"].dlq) == 0


async def test_transient_failure_is_dead_lettered_after_the_last_retry(  # type: ignore[no-untyped-def]
    harness, shell_topology: Topology
) -> None:
    recorder, publisher, channel = harness
    queue = shell_topology.queues["invoice"]
    recorder.fail_with = [failures.TransientFailure("still down")] * queue.max_attempts
    sent = await _send(publisher, shell_topology)
    [dead] = await take(channel, queue.dlq, 1)
    assert len(recorder.calls) == queue.max_attempts == 4
    assert dead.headers[failures.ATTEMPTS] == 4
    assert dead.headers[failures.FAILURE_KIND] == "transient"
    assert dead.headers[failures.FIRST_FAILURE_AT] < dead.headers[failures.LAST_FAILURE_AT]
    assert dead.message_id == str(sent.message_id)
    assert "x-death" not in dead.headers


@pytest.mark.parametrize(
    ("body", "message_type"),
    [(b"{not json", "OrderPaid"), (b'{"order_id": "nope"}', "OrderPaid"), (b"{}", "SomethingElse")],
    ids=["undecodable", "schema-invalid", "unknown-type"],
)
async def test_poison_is_dead_lettered_and_does_not_block_the_next(  # type: ignore[no-untyped-def]
    harness, shell_topology: Topology, body: bytes, message_type: str
) -> None:
    recorder, publisher, channel = harness
    poison = await _send(publisher, shell_topology, body=body, message_type=message_type)
    good = await _send(publisher, shell_topology)
    queue = shell_topology.queues["invoice"]
    [dead] = await take(channel, queue.dlq, 1)
    assert dead.message_id == str(poison.message_id)
    assert dead.headers[failures.FAILURE_KIND] == "permanent"
    await eventually(
        lambda: _value([c.message_id for c in recorder.calls]),
        until=lambda ids: good.message_id in ids,
        what="good message handled",
    )
    assert poison.message_id not in [c.message_id for c in recorder.calls]


async def _value(value: object) -> object:
    await asyncio.sleep(0)
    return value


class ReconnectingPublisher:
    """The real publisher, failing its first `failures` publishes as a reconnecting one does."""

    def __init__(self, real: Publisher, failures: int) -> None:
        self.real = real
        self.failures = failures

    async def publish(self, outgoing: Outgoing) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("publisher connection is reconnecting")
        await self.real.publish(outgoing)


async def test_a_failure_while_the_publisher_reconnects_keeps_its_retries_and_reason(
    settings: Settings, shell_topology: Topology
) -> None:
    recorder = Recorder()
    recorder.fail_with = [failures.PermanentFailure("bad payload")]
    queue = shell_topology.queues["email"]
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    channel = await publisher._connection.channel()
    for name in (queue.name, queue.dlq):
        await (await channel.get_queue(name)).purge()
    consumer = QueueConsumer(queue, jitter=0.1)
    consumer.bind({OrderPaid: recorder.handle}, ReconnectingPublisher(publisher, 2))  # type: ignore[arg-type]
    broker = RabbitBroker(settings.rabbit_url.get_secret_value())
    subscribe(broker, consumer, prefetch=10)
    await broker.start()
    try:
        sent = await _send(publisher, shell_topology)
        [dead] = await take(channel, queue.dlq, 1)
        assert dead.message_id == str(sent.message_id)
        assert dead.headers[failures.FAILURE_KIND] == "permanent"
        assert "bad payload" in dead.headers[failures.ERROR_MESSAGE]
        # Held and settled once, not spun through redeliveries.
        assert len(recorder.calls) == 1
    finally:
        await broker.stop()
        await publisher.close()
