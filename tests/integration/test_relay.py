"""The outbox relay: confirmed, mandatory publishing; claims that several relays share."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from decimal import Decimal

import aio_pika
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from contracts import ChargePayment, OrderPaid
from infra.db.migrate import libpq_url
from infra.db.models import OutboxMessage
from infra.db.session import UnitOfWork
from infra.messaging.outbox import add_to_outbox
from infra.messaging.publisher import Publisher
from infra.messaging.relay import OutboxRelay, sample_gauges
from infra.messaging.topology import Topology, dlq_depths
from infra.settings import Settings
from tests.support.amqp import private_queue, take
from tests.support.polling import eventually
from tests.support.seed import order_paid_event

pytestmark = pytest.mark.integration

DEPTHS_UNREAD = "could not read the dead-letter queues' depths"


@pytest.fixture
async def publisher(settings: Settings, topology: Topology) -> Publisher:
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    yield publisher
    await publisher.close()


@pytest.fixture
async def make_relay(settings: Settings, topology: Topology):  # type: ignore[no-untyped-def]
    relays: list[OutboxRelay] = []

    def make(publisher: Publisher, **options: object) -> OutboxRelay:
        url = libpq_url(settings.database_url.get_secret_value())
        relays.append(OutboxRelay(url, publisher, topology, **options))  # type: ignore[arg-type]
        return relays[-1]

    yield make
    for relay in relays:
        await relay.close()


async def _outbox_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(OutboxMessage))).scalar_one()


async def test_publishes_with_the_contract_properties_then_deletes(
    settings: Settings,
    uow: UnitOfWork,
    clean_db: AsyncEngine,
    publisher: Publisher,
    topology: Topology,
    make_relay,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    channel = await rabbit.channel()
    downstream = await private_queue(channel, topology.orders_exchange, "order.*")
    event = order_paid_event()
    async with uow() as session:
        row = add_to_outbox(session, event, correlation_id=event.checkout_id)
        await session.commit()

    assert await make_relay(publisher).drain() == 1

    [message] = await take(channel, downstream.name, 1)
    assert message.message_id == str(row.message_id)
    assert message.correlation_id == str(event.checkout_id)
    assert message.type == "OrderPaid"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert message.headers["x-schema-version"] == 1
    assert OrderPaid.model_validate_json(message.body) == event
    assert await _outbox_count(clean_db) == 0
    await channel.close()


async def test_an_unroutable_message_is_an_error_and_stays_in_the_outbox(
    settings: Settings,
    uow: UnitOfWork,
    clean_db: AsyncEngine,
    publisher: Publisher,
    topology: Topology,
    make_relay,
) -> None:
    async with uow() as session:
        row = add_to_outbox(
            session,
            ChargePayment(
                checkout_id=uuid.uuid4(),
                order_id=uuid.uuid4(),
                payment_id=uuid.uuid4(),
                amount=Decimal("1.00"),
                currency="EUR",
            ),
            correlation_id=uuid.uuid4(),
        )
        row.routing_key = "nobody.listens.here"
        await session.commit()

    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await make_relay(publisher).drain()
    assert await _outbox_count(clean_db) == 1


async def test_two_relays_publish_every_row_exactly_once(
    settings: Settings,
    uow: UnitOfWork,
    clean_db: AsyncEngine,
    publisher: Publisher,
    topology: Topology,
    make_relay,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    channel = await rabbit.channel()
    downstream = await private_queue(channel, topology.orders_exchange, "order.paid")
    rows = 300
    async with uow() as session:
        for _ in range(rows):
            event = order_paid_event()
            add_to_outbox(session, event, correlation_id=event.checkout_id)
        await session.commit()
    second = await Publisher.connect(settings.rabbit_url.get_secret_value())
    try:
        moved = await asyncio.gather(
            make_relay(publisher, batch_size=25).drain(),
            make_relay(second, batch_size=25).drain(),
        )
    finally:
        await second.close()

    assert sum(moved) == rows
    assert all(m > 0 for m in moved), moved  # both relays took part
    messages = await take(channel, downstream.name, rows)
    assert max(Counter(m.message_id for m in messages).values()) == 1
    assert await _outbox_count(clean_db) == 0
    await channel.close()


async def test_notify_wakes_the_relay_without_waiting_for_the_poll(
    settings: Settings,
    uow: UnitOfWork,
    clean_db: AsyncEngine,
    publisher: Publisher,
    topology: Topology,
    make_relay,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    channel = await rabbit.channel()
    downstream = await private_queue(channel, topology.orders_exchange, "order.paid")
    stop = asyncio.Event()
    # A poll interval far longer than the test: only the NOTIFY can wake it in time.
    relay = make_relay(publisher, poll_interval=60)
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _listening(clean_db), what="relay LISTENing")
        event = order_paid_event()
        async with uow() as session:
            add_to_outbox(session, event, correlation_id=event.checkout_id)
            await session.commit()
        [message] = await take(channel, downstream.name, 1, timeout=10)
        assert message.correlation_id == str(event.checkout_id)
    finally:
        stop.set()
        await asyncio.wait_for(task, 70)
    await channel.close()


async def _listening(engine: AsyncEngine) -> bool:
    """True once some session of this database has run LISTEN outbox."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query = 'LISTEN outbox'"
    )
    async with engine.connect() as conn:
        return bool((await conn.execute(query)).scalar_one())


async def test_the_gauges_say_once_that_the_dead_letter_depths_cannot_be_read(
    settings: Settings, topology: Topology, publisher: Publisher
) -> None:
    """A dead-letter queue that is not there (never declared, or not readable) is a
    warning, once, not a debug line every few seconds; the other gauges go on."""
    undeclared = Topology(f"gauges_{uuid.uuid4().hex[:8]}", topology.retry_delays_ms)
    stop = asyncio.Event()
    url = libpq_url(settings.database_url.get_secret_value())
    with capture_logs() as logs:
        sampling = asyncio.create_task(
            sample_gauges(url, publisher, undeclared, stop, interval=0.05)
        )

        async def unread() -> list[str]:
            return [line["log_level"] for line in logs if line["event"] == DEPTHS_UNREAD]

        await eventually(unread, timeout=10, what="the dead-letter depths' warning")
        await asyncio.sleep(0.5)  # ten more rounds
        stop.set()
        await sampling
    levels = await unread()
    assert levels[0] == "warning"
    assert "warning" not in levels[1:]
    assert not [line for line in logs if line["event"].startswith("could not sample")]


async def test_the_gauges_read_every_dead_letter_depth(
    settings: Settings, topology: Topology, publisher: Publisher
) -> None:
    depths = await dlq_depths(publisher.connection, topology)
    assert set(depths) == {queue.name for queue in topology.queues.values()}
