"""Batch publishing: `Publisher.publish_many` and the relay's handling of partial batches.

The relay writes a whole batch before awaiting any confirm and files the confirms
itself (`infra.messaging.publisher._send_batch`), so these tests pin what that must
keep: the same AMQP properties as a single `publish`, one outcome per message in
batch order, returns and nacks landing on the right message even with single
publishes interleaved on the same channel, and, in the relay, only confirmed rows
deleted. No timing is asserted anywhere.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.migrate import libpq_url
from infra.db.models import CheckoutEvent, OutboxMessage
from infra.db.session import UnitOfWork
from infra.messaging.outbox import add_to_outbox
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.settings import Settings
from infra.timeline.record import published_events
from tests.support.amqp import private_queue, take
from tests.support.seed import order_paid_event

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[Publisher]:
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    yield publisher
    await publisher.close()


async def full_queue(channel: AbstractChannel) -> AbstractQueue:
    """A queue that refuses every message: the broker nacks whatever is routed to it."""
    return await channel.declare_queue(
        exclusive=True,
        auto_delete=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )


async def _count(queue: AbstractQueue) -> int:
    """The messages in `queue`, taken out (a passive declare on the channel that declared
    it answers from aio-pika's cache)."""
    count = 0
    while await queue.get(no_ack=True, fail=False) is not None:
        count += 1
    return count


def outgoing(queue: str, n: int, **overrides: object) -> Outgoing:
    """A message to `queue` through the default exchange."""
    fields: dict[str, object] = {
        "exchange": "",
        "routing_key": queue,
        "body": f'{{"n": {n}}}'.encode(),
        "message_id": uuid.uuid4(),
        "correlation_id": uuid.uuid4(),
        "message_type": "BatchTest",
        "headers": {"x-schema-version": 1, "n": n},
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    fields.update(overrides)
    return Outgoing(**fields)  # type: ignore[arg-type]


def test_the_batch_properties_are_those_of_a_single_publish() -> None:
    for message in (
        outgoing("q", 1),
        outgoing("q", 2, message_id=None, correlation_id="not-a-uuid", timestamp=None),
        outgoing("q", 3, expiration_ms=4000, headers={}),
    ):
        single = message.to_amqp().properties
        batch = message.properties()
        if message.timestamp is None:  # both stamp "now": compare the rest
            single.timestamp = batch.timestamp
        assert batch == single


async def test_a_batch_is_confirmed_in_order_with_the_single_publish_properties(
    publisher: Publisher, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    batch = [outgoing(queue.name, n) for n in range(300)]
    # One message over the frame size, so its body goes out in several frames.
    batch.append(outgoing(queue.name, 300, body=b"x" * 300_000))

    assert await publisher.publish_many(batch) == [None] * len(batch)

    received = await take(channel, queue.name, len(batch))
    assert [m.message_id for m in received] == [str(o.message_id) for o in batch]
    for message, sent in zip(received, batch, strict=True):
        assert message.body == sent.body
        assert message.correlation_id == str(sent.correlation_id)
        assert message.type == "BatchTest"
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.timestamp == sent.timestamp
        assert message.headers == sent.headers
    assert await publisher.publish_many([]) == []


async def test_an_unroutable_or_nacked_message_fails_alone(
    publisher: Publisher, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    refusing = await full_queue(channel)
    batch = [
        outgoing(queue.name, 0),
        outgoing(f"nobody.listens.{uuid.uuid4().hex}", 1),  # returned: unroutable
        outgoing(queue.name, 2),
        outgoing(refusing.name, 3),  # nacked
        outgoing(queue.name, 4),
    ]

    outcomes = await publisher.publish_many(batch)

    assert [o is None for o in outcomes] == [True, False, True, False, True]
    assert isinstance(outcomes[1], aio_pika.exceptions.PublishError)
    assert isinstance(outcomes[3], aio_pika.exceptions.DeliveryError)
    assert not isinstance(outcomes[3], aio_pika.exceptions.PublishError)
    received = await take(channel, queue.name, 3)
    assert [m.message_id for m in received] == [str(batch[i].message_id) for i in (0, 2, 4)]


async def test_single_publishes_interleaved_with_batches_keep_their_own_outcomes(
    publisher: Publisher, channel: AbstractChannel
) -> None:
    """Delivery tags stay in step: a nack meant for a single publish never lands on a
    batch's message, nor a batch's nack on a single publish."""
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    refusing = await full_queue(channel)

    async def single(n: int) -> BaseException | None:
        try:
            await publisher.publish(outgoing(refusing.name if n % 2 else queue.name, n))
        except aio_pika.exceptions.DeliveryError as exc:
            return exc
        return None

    batches = [
        [outgoing(refusing.name if n % 5 == 4 else queue.name, n) for n in range(b, b + 50)]
        for b in range(0, 200, 50)
    ]
    results = await asyncio.gather(
        *(publisher.publish_many(b) for b in batches), *(single(n) for n in range(40))
    )

    for batch, outcomes in zip(batches, results[: len(batches)], strict=True):
        assert isinstance(outcomes, list)
        for sent, outcome in zip(batch, outcomes, strict=True):
            refused = sent.routing_key == refusing.name
            assert (
                isinstance(outcome, aio_pika.exceptions.DeliveryError)
                if refused
                else (outcome is None)
            ), (sent.headers["n"], outcome)
    for n, outcome in enumerate(results[len(batches) :]):
        assert (outcome is not None) == bool(n % 2), (n, outcome)
    await take(channel, queue.name, 200 - 40 + 20)


async def test_a_closed_channel_sends_nothing_and_says_so(
    publisher: Publisher, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await publisher.close()
    with pytest.raises(aio_pika.exceptions.ChannelInvalidStateError):
        await publisher.publish_many([outgoing(queue.name, 0)])
    assert await _count(queue) == 0


async def test_confirms_pending_when_the_connection_closes_fail_rather_than_hang(
    publisher: Publisher, channel: AbstractChannel
) -> None:
    """The batch's confirms are not in aiormq's future store one by one: the batch's
    guard must pass the close on to every confirm still pending."""
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    batch = [outgoing(queue.name, n, body=b"x" * 20_000) for n in range(2000)]
    sent = await publisher.send_many(batch)
    await publisher.close()

    outcomes = await asyncio.wait_for(sent.outcomes(), 30)

    assert len(outcomes) == len(batch)
    failed = [o for o in outcomes if o is not None]
    assert all(isinstance(o, Exception) for o in failed), {type(o) for o in failed}
    # Whatever was confirmed did arrive (and maybe more: a lost confirm is not a loss).
    assert await _count(queue) >= outcomes.count(None)


# ------------------------------------------------------------------------- the relay


async def _stage(uow: UnitOfWork, routing_keys: list[str]) -> list[OutboxMessage]:
    """One committed `OrderPaid` outbox row per routing key, in this order."""
    rows = []
    async with uow() as session:
        for key in routing_keys:
            event = order_paid_event()
            row = add_to_outbox(session, event, correlation_id=event.checkout_id)
            row.routing_key = key
            rows.append(row)
            await session.flush()  # ids in list order
        await session.commit()
    return rows


async def _left(engine: AsyncEngine) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(OutboxMessage.message_id))).scalars())


async def _published_events(engine: AsyncEngine) -> set[uuid.UUID | None]:
    async with engine.connect() as conn:
        query = select(CheckoutEvent.message_id).where(CheckoutEvent.kind == "outbox.published")
        return set((await conn.execute(query)).scalars())


async def _events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(CheckoutEvent))).scalar_one()


async def test_the_relay_deletes_what_was_confirmed_and_keeps_what_was_not(
    settings: Settings,
    uow: UnitOfWork,
    clean_db: AsyncEngine,
    publisher: Publisher,
    topology: Topology,
    channel: AbstractChannel,
) -> None:
    key = f"order.batch.{uuid.uuid4().hex}"
    refused_key = f"order.refused.{uuid.uuid4().hex}"
    downstream = await private_queue(channel, topology.orders_exchange, key)
    refusing = await full_queue(channel)
    await refusing.bind(topology.orders_exchange, refused_key)
    keys = [key] * 30
    keys[3] = "nobody.listens.here"  # returned
    keys[17] = refused_key  # nacked
    rows = await _stage(uow, keys)
    relay = OutboxRelay(libpq_url(settings.database_url.get_secret_value()), publisher, topology)
    try:
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await relay.publish_batch()
        # The failed rows stay, for the next attempt; every other row is gone.
        kept = {rows[3].message_id, rows[17].message_id}
        assert await _left(clean_db) == kept
        # The timeline has the confirmed rows only.
        published = {r.message_id for r in rows} - kept
        assert await _published_events(clean_db) == published
        # Each confirmed row reached its queue once, in id order.
        received = await take(channel, downstream.name, 28)
        assert [m.message_id for m in received] == [
            str(r.message_id) for r in rows if r.message_id in published
        ]

        # The next attempt meets the same failures and moves nothing twice.
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await relay.publish_batch()
        assert await _left(clean_db) == kept
        assert await _events(clean_db) == 28
        assert await downstream.get(no_ack=True, fail=False) is None
    finally:
        await relay.close()


async def test_the_relay_moves_a_backlog_in_batches_in_id_order(
    settings: Settings,
    uow: UnitOfWork,
    clean_db: AsyncEngine,
    publisher: Publisher,
    topology: Topology,
    channel: AbstractChannel,
) -> None:
    key = f"order.batch.{uuid.uuid4().hex}"
    downstream = await private_queue(channel, topology.orders_exchange, key)
    rows = await _stage(uow, [key] * 250)
    relay = OutboxRelay(
        libpq_url(settings.database_url.get_secret_value()), publisher, topology, batch_size=100
    )
    try:
        assert await relay.publish_batch() == 100
        assert await relay.drain() == 150
    finally:
        await relay.close()

    received = await take(channel, downstream.name, 250)
    assert [m.message_id for m in received] == [str(r.message_id) for r in rows]
    assert await _left(clean_db) == set()
    assert await _events(clean_db) == 250


async def test_the_timeline_lines_are_those_published_events_makes(
    settings: Settings,
    uow: UnitOfWork,
    clean_db: AsyncEngine,
    publisher: Publisher,
    topology: Topology,
    channel: AbstractChannel,
) -> None:
    """The relay builds its `outbox.published` lines in SQL (`relay.PUBLISHED`): they
    must be the ones `infra.timeline.record.published_events` makes of the same rows."""
    key = f"order.batch.{uuid.uuid4().hex}"
    await private_queue(channel, topology.orders_exchange, key)
    await _stage(uow, [key] * 5)
    async with clean_db.connect() as conn:
        claimed = (await conn.execute(select(OutboxMessage.__table__))).mappings().all()
    relay = OutboxRelay(libpq_url(settings.database_url.get_secret_value()), publisher, topology)
    try:
        assert await relay.publish_batch() == 5
    finally:
        await relay.close()

    async with clean_db.connect() as conn:
        written = (await conn.execute(select(CheckoutEvent.__table__))).mappings().all()
    [at] = {line["at"] for line in written}  # one confirm time for the batch
    expected = {e.message_id: e for e in published_events(claimed, at=at)}
    assert len(written) == len(expected) == 5
    fields = ("checkout_id", "order_id", "source", "kind", "message_type", "detail")
    for line in written:
        event = expected[line["message_id"]]
        assert {f: line[f] for f in fields} == {f: getattr(event, f) for f in fields}
        assert line["duration_ms"] == pytest.approx(event.duration_ms, abs=0.01)
