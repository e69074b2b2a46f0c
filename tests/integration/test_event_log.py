"""The event log against the real broker: what the relay writes, listing, backfill.

The run's stream is shared by every test of the session, so each test picks out its
own events: by order, or from the offset of its first event on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import OrderPaymentFailed
from contracts.envelope import Message
from examples.order_paid_subscriber import Delivery, Stats, SubscriberConfig, subscribe
from infra.db.session import UnitOfWork
from infra.messaging.connect import connect
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.events.backfill import BackfillOutcome, backfill
from operations.events.errors import BackfillNotRecorded, BackfillStopped, LogLost, QueueMissing
from operations.events.event import LoggedEvent
from operations.events.listing import list_events
from operations.events.operations import backfill_recorded
from operations.events.reading import Patience
from operations.events.selection import EventSelection
from tests.support.amqp import depth, private_queue, take
from tests.support.polling import eventually
from tests.support.seed import order_paid_event, through_outbox

pytestmark = pytest.mark.integration

QUICK = Patience(first=2.0, idle=0.5)


@dataclass(frozen=True)
class Sent:
    """An event the test put through the outbox and the relay."""

    message_id: str
    order_id: str
    event: Message


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await connect(settings.rabbit_url.get_secret_value())
    yield connection
    if not connection.is_closed:
        await connection.close()


def failed_event(order_id: uuid.UUID | None = None) -> OrderPaymentFailed:
    return OrderPaymentFailed(
        order_id=order_id or uuid.uuid4(),
        checkout_id=uuid.uuid4(),
        reason="card_declined",
        failed_at=datetime.now(UTC),
    )


async def publish(
    uow: UnitOfWork, relay: OutboxRelay, events: Sequence[Message], *, at: datetime | None = None
) -> list[Sent]:
    """Write `events` to the outbox (stamped `at`, default now) and let the relay publish them."""
    message_ids = await through_outbox(uow, relay, events, at=at)
    return [
        Sent(message_id, str(event.order_id), event)  # type: ignore[attr-defined]
        for message_id, event in zip(message_ids, events, strict=True)
    ]


async def logged(
    connection: aio_pika.abc.AbstractConnection,
    topology: Topology,
    sent: Sequence[Sent],
    **selection: object,
) -> list[LoggedEvent]:
    """The log's events among `sent`, waiting until every one of them is there."""
    ids = {s.message_id for s in sent}

    async def mine() -> list[LoggedEvent]:
        listing = await list_events(
            connection,
            topology.event_log,
            EventSelection(**selection),  # type: ignore[arg-type]
            started=datetime.now(UTC),
            patience=QUICK,
        )
        return [e for e in listing.events if e.message_id in ids]

    return await eventually(mine, until=lambda found: len(found) == len(ids), what="the events")


async def run_backfill(
    connection: aio_pika.abc.AbstractConnection,
    topology: Topology,
    queue: str,
    selection: EventSelection,
    **options: object,
) -> BackfillOutcome:
    return await backfill(
        connection,
        topology.event_log,
        queue,
        selection,
        started=datetime.now(UTC),
        patience=QUICK,
        **options,  # type: ignore[arg-type]
    )


async def drain_ids(channel: aio_pika.abc.AbstractChannel, queue: str) -> list[str | None]:
    return [m.message_id for m in await take(channel, queue, await depth(channel, queue))]


# --------------------------------------------------------------------------- the log


async def test_events_written_by_the_relay_are_in_the_log_with_every_property(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
) -> None:
    event = order_paid_event()
    [sent] = await publish(uow, relay, [event])

    [found] = await logged(connection, topology, [sent], order_id=sent.order_id)

    assert found.message_id == sent.message_id
    assert found.correlation_id is not None
    assert found.message_type == "OrderPaid"
    assert found.routing_key == "order.paid"
    assert found.content_type == "application/json"
    assert found.delivery_mode == int(aio_pika.DeliveryMode.PERSISTENT)
    assert found.headers["x-schema-version"] == 1
    assert found.timestamp is not None
    assert abs(found.timestamp - datetime.now(UTC)) < timedelta(minutes=1)
    assert found.parsed_body()["order_id"] == str(event.order_id)
    assert found.offset >= 0


async def test_listing_consumes_nothing(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
) -> None:
    sent = await publish(uow, relay, [order_paid_event() for _ in range(3)])

    first = await logged(connection, topology, sent)
    again = await logged(connection, topology, sent)

    assert [(e.offset, e.message_id) for e in again] == [(e.offset, e.message_id) for e in first]
    assert [e.message_id for e in first] == [s.message_id for s in sent]  # in log order


async def test_listing_selects_by_time_type_and_order(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    older = await publish(uow, relay, [order_paid_event()], at=now - timedelta(minutes=5))
    paid = await publish(uow, relay, [order_paid_event(), order_paid_event()], at=now)
    failed = await publish(uow, relay, [failed_event()], at=now)
    first_offset = (await logged(connection, topology, older))[0].offset

    def ids(found: list[LoggedEvent]) -> list[str | None]:
        return [e.message_id for e in found]

    since = now - timedelta(minutes=1)
    recent = await logged(
        connection, topology, paid + failed, since=since, since_offset=first_offset
    )
    assert ids(recent) == [s.message_id for s in paid + failed]

    listing = await list_events(
        connection,
        topology.event_log,
        EventSelection(since_offset=first_offset, types=("OrderPaymentFailed",)),
        started=datetime.now(UTC),
        patience=QUICK,
    )
    assert ids(listing.events) == [failed[0].message_id]
    by_key = await logged(
        connection, topology, paid, since_offset=first_offset, types=("order.paid",)
    )
    assert ids(by_key) == [s.message_id for s in paid]
    one_order = await logged(connection, topology, paid[1:], order_id=paid[1].order_id)
    assert ids(one_order) == [paid[1].message_id]
    up_to = await list_events(
        connection,
        topology.event_log,
        EventSelection(since_offset=first_offset, until=now - timedelta(minutes=2)),
        started=datetime.now(UTC),
        patience=QUICK,
    )
    assert ids(up_to.events) == [older[0].message_id]


async def test_listing_ends_at_the_end_of_the_log_without_waiting_for_more(
    topology: Topology, connection: aio_pika.abc.AbstractConnection
) -> None:
    started = time.monotonic()
    await list_events(
        connection,
        topology.event_log,
        EventSelection(since=datetime.now(UTC) - timedelta(minutes=10)),
        started=datetime.now(UTC),
    )
    assert time.monotonic() - started < 30  # the default patience: a few seconds


# --------------------------------------------------------------------------- backfill


async def test_backfill_copies_the_range_and_types_into_the_named_queue_only(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    # Another team's queue, on this test's connection: gone with it, whatever the outcome.
    own = await connection.channel()
    other_team = await private_queue(own, topology.orders_exchange, "order.#")
    before = await publish(uow, relay, [order_paid_event()])
    wanted = await publish(uow, relay, [order_paid_event(), failed_event(), order_paid_event()])
    [start] = await logged(connection, topology, wanted[:1])
    consumers = [q.name for q in topology.queues.values() if q.exchange == topology.orders_exchange]
    # Live delivery happened; empty every queue so that only the backfill can add to them.
    await other_team.purge()
    for name in consumers:
        await (await channel.get_queue(name)).purge()

    outcome = await run_backfill(
        connection,
        topology,
        team_queue,
        EventSelection(since_offset=start.offset, types=("OrderPaid",)),
    )

    paid_ids = [wanted[0].message_id, wanted[2].message_id]
    assert outcome.message_ids == paid_ids
    copies = await take(channel, team_queue, 2)
    assert [m.message_id for m in copies] == paid_ids
    assert await depth(channel, team_queue) == 0
    assert before[0].message_id not in [m.message_id for m in copies]
    assert await depth(own, other_team.name) == 0
    for name in consumers:
        assert await depth(channel, name) == 0, name


async def test_backfill_keeps_the_ids_and_properties(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    sent = await publish(uow, relay, [order_paid_event()])
    [original] = await logged(connection, topology, sent)

    await run_backfill(
        connection, topology, team_queue, EventSelection(since_offset=original.offset)
    )

    [copy] = await take(channel, team_queue, 1)
    assert copy.message_id == original.message_id
    assert copy.correlation_id == original.correlation_id
    assert copy.type == original.message_type
    assert copy.timestamp is not None
    assert copy.timestamp.replace(tzinfo=UTC) == original.timestamp
    assert copy.content_type == original.content_type
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert dict(copy.headers or {}) == dict(original.headers)
    assert copy.body == original.body
    assert copy.routing_key == team_queue  # through the default exchange


async def test_a_dry_run_copies_nothing(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    sent = await publish(uow, relay, [order_paid_event(), order_paid_event()])
    [first, _] = await logged(connection, topology, sent)

    outcome = await run_backfill(
        connection, topology, team_queue, EventSelection(since_offset=first.offset), dry_run=True
    )

    assert outcome.message_ids == [s.message_id for s in sent]
    assert [e.message_id for e in outcome.selected] == [s.message_id for s in sent]
    assert await depth(channel, team_queue) == 0


async def test_backfill_honours_the_rate(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    sent = await publish(uow, relay, [order_paid_event() for _ in range(12)])
    first = (await logged(connection, topology, sent))[0]
    copied_at: list[float] = []

    def note(outcome: BackfillOutcome) -> None:
        copied_at.append(time.monotonic())

    await run_backfill(
        connection,
        topology,
        team_queue,
        EventSelection(since_offset=first.offset),
        rate=10.0,
        on_progress=note,
    )

    assert len(copied_at) == 12
    # 12 copies at 10 a second need at least 1.1 s; no window of 0.5 s holds more than
    # 5 + 1 (generous: a late slot moves the schedule, it never bunches copies).
    assert copied_at[-1] - copied_at[0] >= 1.1 * 0.8
    assert max(sum(1 for t in copied_at if s <= t < s + 0.5) for s in copied_at) <= 7
    assert await depth(channel, team_queue) == 12


async def test_backfill_refuses_a_queue_that_does_not_exist(
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    missing = f"nobody-{uuid.uuid4().hex[:8]}"
    with pytest.raises(QueueMissing, match=missing):
        await run_backfill(connection, topology, missing, EventSelection(since_offset=0))
    fresh = await channel.get_underlay_channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await fresh.queue_declare(missing, passive=True)  # not created


async def test_an_interrupted_backfill_is_recorded_and_resumes_where_it_stopped(
    settings: Settings,
    uow: UnitOfWork,
    engine: AsyncEngine,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    sent = await publish(uow, relay, [order_paid_event() for _ in range(6)])
    first = (await logged(connection, topology, sent))[0]
    selection = EventSelection(since_offset=first.offset)
    closing: list[asyncio.Task[None]] = []

    def lose_the_broker_after_three(outcome: BackfillOutcome) -> None:
        if outcome.count == 3 and not closing:
            closing.append(asyncio.get_running_loop().create_task(connection.close()))

    with pytest.raises(BackfillStopped) as stopped:
        await backfill_recorded(
            connection,
            uow,
            topology.event_log,
            team_queue,
            selection,
            actor="tester",
            reason="billing joined late",
            rate=10.0,  # the connection closes between two copies
            patience=QUICK,
            on_progress=lose_the_broker_after_three,
        )

    done = stopped.value.outcome
    assert 3 <= done.count < 6
    assert done.resume_offset is not None
    assert done.last_copied is not None
    assert done.resume_offset == done.last_copied.offset + 1
    async with engine.connect() as conn:
        entry = (
            await conn.execute(
                text(
                    "SELECT action, queue, dlq, message_count, message_ids, outcome, details "
                    "FROM dlq_audit WHERE queue = :q ORDER BY id"
                ),
                {"q": team_queue},
            )
        ).one()
    assert entry.action == "backfill"
    assert entry.dlq == topology.event_log
    assert entry.message_count == done.count
    assert entry.message_ids == [s.message_id for s in sent[: done.count]]
    assert entry.outcome == "interrupted"
    assert entry.details["resume_offset"] == done.resume_offset
    assert entry.details["last_offset"] == done.last_copied.offset

    again = await connect(settings.rabbit_url.get_secret_value())
    try:
        resumed = await backfill_recorded(
            again,
            uow,
            topology.event_log,
            team_queue,
            EventSelection(since_offset=done.resume_offset),
            actor="tester",
            reason="billing joined late (resumed)",
            patience=QUICK,
        )
    finally:
        await again.close()

    assert resumed.message_ids == [s.message_id for s in sent[done.count :]]
    assert await drain_ids(channel, team_queue) == [s.message_id for s in sent]  # once each


async def test_a_subscriber_that_deduplicates_sees_each_event_once_across_live_and_backfill(
    settings: Settings,
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    # A few checkouts happen before the new team subscribes...
    early = await publish(uow, relay, [order_paid_event() for _ in range(3)])
    [start, *_] = await logged(connection, topology, early)
    config = SubscriberConfig(
        rabbit_url=settings.rabbit_url.get_secret_value(),
        namespace=settings.namespace,
        queue=f"{settings.namespace}.late-team.{uuid.uuid4().hex[:8]}",
    )
    received: list[Delivery] = []
    stats, stop, ready = Stats(), asyncio.Event(), asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        received.append(delivery)

    running = asyncio.create_task(subscribe(config, handle, stop=stop, ready=ready, stats=stats))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        # ... then it gets new ones live, and asks for a backfill from before it joined,
        # which overlaps what it got live.
        live = await publish(uow, relay, [order_paid_event() for _ in range(2)])
        await eventually(_count(received), until=lambda n: n == 2, what="the live events")
        await run_backfill(
            connection,
            topology,
            config.queue_name,
            EventSelection(since_offset=start.offset, types=("OrderPaid",)),
        )
        everything = [s.message_id for s in early + live]
        await eventually(
            _count(received, stats), until=lambda n: n == 7, what="the backfill handled"
        )
    finally:
        stop.set()
        await running
        await channel.queue_delete(config.queue_name)
        await channel.queue_delete(config.parked_queue)

    assert sorted(d.message_id for d in received) == sorted(everything)
    assert stats.handled == 5
    assert stats.duplicates == 2


def _count(received: list[Delivery], stats: Stats | None = None) -> Callable[[], object]:
    async def probe() -> int:
        return len(received) + (stats.duplicates if stats else 0)

    return probe


async def test_a_broker_lost_while_listing_is_an_error_not_the_end_of_the_log(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
) -> None:
    sent = await publish(uow, relay, [order_paid_event() for _ in range(3)])
    first = (await logged(connection, topology, sent))[0]
    closing: list[asyncio.Task[None]] = []

    def lose_the_broker(listing: object) -> None:
        if not closing:
            closing.append(asyncio.get_running_loop().create_task(connection.close()))

    with pytest.raises(LogLost):
        await list_events(
            connection,
            topology.event_log,
            EventSelection(since_offset=first.offset),
            started=datetime.now(UTC),
            patience=QUICK,
            on_progress=lose_the_broker,
        )


async def test_a_target_queue_deleted_during_a_backfill_stops_it_and_says_how_far_it_got(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    sent = await publish(uow, relay, [order_paid_event() for _ in range(4)])
    first = (await logged(connection, topology, sent))[0]
    deleting: list[asyncio.Task[object]] = []

    def delete_the_queue_after_two(outcome: BackfillOutcome) -> None:
        if outcome.count == 2 and not deleting:
            deleting.append(
                asyncio.get_running_loop().create_task(channel.queue_delete(team_queue))
            )

    with pytest.raises(BackfillStopped) as stopped:
        await run_backfill(
            connection,
            topology,
            team_queue,
            EventSelection(since_offset=first.offset),
            rate=20.0,  # time for the delete to land between two copies
            on_progress=delete_the_queue_after_two,
        )
    done = stopped.value.outcome
    assert 2 <= done.count < 4  # copies confirmed before the delete landed count
    assert done.message_ids == [s.message_id for s in sent[: done.count]]
    assert done.resume_offset == first.offset + done.count  # the first refused copy
    await channel.declare_queue(team_queue, durable=True)  # for the fixture's clean-up


async def test_copies_whose_audit_entry_cannot_be_written_are_reported_as_copied(
    uow: UnitOfWork,
    engine: AsyncEngine,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    sent = await publish(uow, relay, [order_paid_event() for _ in range(3)])
    first = (await logged(connection, topology, sent))[0]
    renaming: list[asyncio.Task[None]] = []

    async def lose_the_audit_table() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE dlq_audit RENAME TO dlq_audit_away"))

    def after_the_first_copy(outcome: BackfillOutcome) -> None:
        if not renaming:
            renaming.append(asyncio.get_running_loop().create_task(lose_the_audit_table()))

    try:
        with pytest.raises(BackfillNotRecorded) as caught:
            await backfill_recorded(
                connection,
                uow,
                topology.event_log,
                team_queue,
                EventSelection(since_offset=first.offset),
                actor="tester",
                reason="audit goes away",
                rate=4.0,  # the rename lands long before the last copy
                patience=QUICK,
                on_progress=after_the_first_copy,
            )
    finally:
        if renaming:  # the first copy was reported: the table was renamed, put it back
            await renaming[0]
            async with engine.begin() as conn:
                await conn.execute(text("ALTER TABLE dlq_audit_away RENAME TO dlq_audit"))
    assert caught.value.outcome.message_ids == [s.message_id for s in sent]
    assert caught.value.stopped is None
    assert await depth(channel, team_queue) == 3


async def test_a_read_stops_at_the_log_end_of_its_start_while_events_keep_coming(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    connection: aio_pika.abc.AbstractConnection,
) -> None:
    first = (await logged(connection, topology, await publish(uow, relay, [order_paid_event()])))[0]
    stop = asyncio.Event()
    published: list[Sent] = []

    async def keep_publishing() -> None:
        while not stop.is_set():
            published.extend(await publish(uow, relay, [order_paid_event()]))
            await asyncio.sleep(0.05)  # pacing the load, not waiting for an outcome

    async def how_many() -> int:
        return len(published)

    busy = asyncio.create_task(keep_publishing())
    try:
        await eventually(how_many, until=lambda n: n >= 3, what="a steady flow of events")
        started = datetime.now(UTC)
        began = time.monotonic()
        listing = await list_events(
            connection,
            topology.event_log,
            EventSelection(since_offset=first.offset),
            started=started,
            patience=QUICK,
        )
        took = time.monotonic() - began
    finally:
        stop.set()
        await busy
    # It ended although the idle wait never came: at the first event stamped after it began.
    assert took < 10
    assert listing.events[0].message_id == first.message_id
    assert all(e.timestamp is not None and e.timestamp <= started for e in listing.events)
    # The event that ended it, at least, came after the end it kept to.
    assert {s.message_id for s in published} - {e.message_id for e in listing.events}
