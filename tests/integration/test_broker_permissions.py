"""One broker user per part (`infra.messaging.permissions`) against the real RabbitMQ.

The users come from the generator: its definitions document (random passwords) is
imported with one `rabbitmqctl import_definitions` call, for a namespace of this module's
own (`test_<hex>_perm`), so user names are unique per run and no other module's workers
consume these queues. The setup user then declares the namespace's topology from
nothing, with the command compose's `broker-setup` service runs, and every part runs the
real code with its own user: what it must do works, what it must not do is refused by
the broker (ACCESS_REFUSED, reply code 403). Users and topology are removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aio_pika
import pytest
import yaml
from aiormq.channel import EXCEPTION_MAPPING
from aiormq.exceptions import ChannelAccessRefused
from yarl import URL

from checkout_api.broker import BrokerLink
from consumers.main import build_worker as build_consumer
from contracts import ChargePayment
from infra.db.session import UnitOfWork
from infra.localports import free_port
from infra.messaging import failures
from infra.messaging.event_log import retire_journal
from infra.messaging.permissions import BrokerUser, broker_users, render_definitions
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import (
    Topology,
    declare_topology,
    delete_topology,
)
from infra.settings import Settings, load_settings
from operations.dlq import inspect
from operations.dlq.letters import DeadLetter
from operations.dlq.purge import purge
from operations.dlq.replay import REPLAY_COUNT, replay
from operations.dlq.selection import Selection
from operations.events.backfill import backfill
from operations.events.listing import list_events
from operations.events.reading import Patience
from operations.events.selection import EventSelection
from saga.main import build_worker as build_saga
from tests.support.amqp import take
from tests.support.polling import eventually
from tests.support.seed import order_paid_event, paid_order

pytestmark = pytest.mark.integration

RABBITMQCTL = shutil.which("rabbitmqctl")
ROOT = Path(__file__).resolve().parents[2]


async def rabbitmqctl(*args: str, stdin: bytes | None = None) -> str:
    assert RABBITMQCTL is not None
    process = await asyncio.create_subprocess_exec(
        RABBITMQCTL,
        "-q",
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]}: {(err or out).decode(errors='replace')}")
    return out.decode(errors="replace")


async def compose_broker_setup(env: dict[str, str]) -> None:
    """Run compose.yaml's broker-setup command (`checkout declare`) here, with `env`."""
    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["broker-setup"]
    assert "entrypoint" not in service  # the image's: `checkout`
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        *service["command"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out.decode(errors="replace")


@dataclass(frozen=True)
class Broker:
    """This module's namespace, its users (by part) and how to connect as each."""

    namespace: str
    topology: Topology
    users: dict[str, BrokerUser]
    urls: dict[str, str]

    def settings(self, part: str, **overrides: object) -> Settings:
        """The run's settings, in this namespace, connecting as `part`'s user."""
        return load_settings(namespace=self.namespace, rabbit_url=self.urls[part], **overrides)


@pytest.fixture(scope="module")
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not on PATH: it is needed to create the broker users")
    namespace = f"{settings.namespace}_perm"
    users = {u.part: u for u in broker_users(namespace)}
    passwords = {part: secrets.token_urlsafe(18) for part in users}
    admin_url = settings.rabbit_url.get_secret_value()
    urls = {
        part: str(URL(admin_url).with_user(u.name).with_password(passwords[part]))
        for part, u in users.items()
    }
    # Users and permissions only: the vhost `/` exists and is shared.
    definitions = render_definitions(list(users.values()), passwords, with_vhost=False)
    topology = Topology.from_settings(load_settings(namespace=namespace))
    declared = False
    try:
        await rabbitmqctl("import_definitions", stdin=definitions.encode())
        # The setup user creates the whole topology on a broker that has none of it,
        # with the very command compose's broker-setup service runs.
        declared = True
        await compose_broker_setup(
            {"CHECKOUT_NAMESPACE": namespace, "CHECKOUT_RABBIT_URL": urls["setup"]}
        )
        yield Broker(namespace, topology, users, urls)
    finally:
        if declared:
            connection = await aio_pika.connect(admin_url)
            async with connection:
                await delete_topology(await connection.channel(), topology)
        results = await asyncio.gather(
            *(rabbitmqctl("delete_user", u.name) for u in users.values()),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """The test's own (guest) channel, to look into queues behind the parts' backs."""
    connection = await aio_pika.connect(settings.rabbit_url.get_secret_value())
    async with connection:
        yield await connection.channel()


async def _ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


async def refused(
    url: str,
    action: str,
    target: str,
    routing_key: str = "x",
) -> ChannelAccessRefused:
    """Try `action` ("publish" to an exchange, "get" or "consume" from a queue) as the
    user of `url`; return the broker's refusal (the test fails if it is allowed)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(ChannelAccessRefused) as caught:
            if action == "publish":
                exchange = (
                    channel.default_exchange
                    if target == ""
                    else await channel.get_exchange(target, ensure=False)
                )
                await exchange.publish(aio_pika.Message(b"{}"), routing_key, mandatory=True)
            else:
                queue = await channel.get_queue(target, ensure=False)
                if action == "get":
                    await queue.get(no_ack=False, fail=False)
                else:
                    await queue.consume(_ignore)
    return caught.value


def assert_refused(error: ChannelAccessRefused, resource: str, user: str) -> None:
    """The broker's own refusal. (RabbitMQ 3.10 does not say which of configure, write
    or read was missing; newer versions prefix it, e.g. "write access to ...".)"""
    assert EXCEPTION_MAPPING[403] is ChannelAccessRefused  # AMQP reply code 403
    text = str(error.args[0])
    assert text.startswith("ACCESS_REFUSED - "), text
    assert f"access to {resource} in vhost '/' refused for user '{user}'" in text, text


async def test_consumers_user_cannot_publish_to_the_orders_exchange(broker: Broker) -> None:
    for part in ("email", "invoice", "production"):
        user = broker.users[part].name
        for exchange in (broker.topology.orders_exchange, broker.topology.internal_exchange):
            error = await refused(broker.urls[part], "publish", exchange, "order.paid")
            assert_refused(error, f"exchange '{exchange}'", user)


async def test_consumer_runs_with_its_user_retries_and_dead_letters_and_operator_replays(
    broker: Broker, admin: aio_pika.abc.AbstractChannel, uow: UnitOfWork
) -> None:
    queue = broker.topology.queues["email"]
    # Nothing listens on this port: every call fails (transient), so the message goes
    # round the wait queues (the consumer's retry copies) and then to the .dlq.
    email = broker.settings("email", email_url=f"http://127.0.0.1:{free_port()}", http_attempts=1)
    relay = await Publisher.connect(broker.urls["relay"])
    operator = await aio_pika.connect(broker.urls["operator"])
    try:
        # The real consumer process, with its user: it re-declares the topology,
        # subscribes, and publishes its retry and dead-letter copies via amq.default.
        async with build_consumer(email, "email").running():
            # A paid order in the database: the consumer acts on nothing else.
            event = await paid_order(uow, email="perm@example.com")
            message_id = str(uuid.uuid4())
            await relay.publish(
                Outgoing.of(
                    event,
                    exchange=broker.topology.orders_exchange,
                    message_id=uuid.UUID(message_id),
                    correlation_id=event.checkout_id,
                )
            )

            async def dead_letters() -> list[DeadLetter]:
                return (await inspect.peek(operator, queue, 10)).letters

            # The operator's user reads the .dlq (basic.get, unacked) as `dlq show` does.
            (letter,) = await eventually(dead_letters, what="the message in the .dlq")
            assert letter.message_id == message_id
            assert letter.attempts == queue.max_attempts  # went round every wait queue
            assert letter.headers[failures.FAILURE_KIND] == "transient"
            assert letter.headers[failures.ORIGINAL_QUEUE] == queue.name

            # `dlq replay` as the operator: back into the queue, handled, dead-lettered again.
            replayed = await replay(operator, queue, Selection.of([message_id]))
            assert replayed.message_ids == [message_id]
            (again,) = await eventually(
                dead_letters,
                until=lambda found: bool(found) and REPLAY_COUNT in found[0].headers,
                what="the replayed message back in the .dlq",
            )
            assert again.headers[REPLAY_COUNT] == 1
            # `dlq purge` as the operator.
            dropped = await purge(operator, queue, Selection.of([message_id]))
            assert dropped.message_ids == [message_id]
            depths = {d.dlq: d.messages for d in await inspect.depths(operator, broker.topology)}
            assert depths[queue.dlq] == 0
        # The operator reads dead letters only, not the live queues.
        error = await refused(broker.urls["operator"], "get", queue.name)
        assert_refused(error, f"queue '{queue.name}'", broker.users["operator"].name)
    finally:
        await operator.close()
        await relay.close()
        for name in ("invoice", "production"):  # the same event, never consumed here
            await (await admin.get_queue(broker.topology.queues[name].name)).purge()


async def test_relay_user_publishes_to_the_orders_and_internal_exchanges(
    broker: Broker, admin: aio_pika.abc.AbstractChannel
) -> None:
    topology = broker.topology
    # What `checkout relay` does at start: connect, declare the topology.
    publisher = await Publisher.connect(broker.urls["relay"])
    try:
        await declare_topology(publisher.channel, topology)
        # A key only the event log is bound to: published (confirmed and routed) and kept
        # there, reaching no consumer's queue.
        event = order_paid_event(
            order_name="Permission check", amount=Decimal("5.00"), currency="EUR"
        )
        await publisher.publish(
            Outgoing(
                exchange=topology.orders_exchange,
                routing_key="order.permission_check",
                body=event.model_dump_json().encode(),
                message_id=uuid.uuid4(),
                correlation_id=event.checkout_id,
                message_type="OrderPaid",
            )
        )
        charge = ChargePayment(
            checkout_id=uuid.uuid4(),
            order_id=uuid.uuid4(),
            payment_id=uuid.uuid4(),
            amount=Decimal("5.00"),
            currency="EUR",
        )
        await publisher.publish(
            Outgoing.of(
                charge,
                exchange=topology.internal_exchange,
                message_id=uuid.uuid4(),
                correlation_id=charge.checkout_id,
            )
        )
        (arrived,) = await take(admin, topology.queues["payment"].name, 1)
        assert arrived.type == "ChargePayment"
        # The relay's dead-letter depth gauge: a passive declare, which needs no right.
        for queue in topology.queues.values():
            await publisher.channel.declare_queue(queue.dlq, passive=True)
    finally:
        await publisher.close()
    # It has no business with the default exchange (so with no queue directly).
    error = await refused(broker.urls["relay"], "publish", "", topology.queues["payment"].name)
    assert_refused(error, "exchange 'amq.default'", broker.users["relay"].name)


async def test_saga_runs_with_its_user_and_publishes_its_events_through_the_outbox_only(
    broker: Broker,
) -> None:
    async with build_saga(broker.settings("saga")).running() as worker:
        assert worker.topology == broker.topology
    for exchange in (broker.topology.orders_exchange, broker.topology.internal_exchange):
        error = await refused(broker.urls["saga"], "publish", exchange)
        assert_refused(error, f"exchange '{exchange}'", broker.users["saga"].name)


async def test_api_user_connects_for_readiness_but_reads_and_publishes_nothing(
    broker: Broker,
) -> None:
    link = BrokerLink(broker.urls["api"])
    link.start()
    try:

        async def connected() -> bool:
            return link.is_connected

        await eventually(connected, what="the API's broker link")
    finally:
        await link.close()
    api = broker.users["api"].name
    email_queue = broker.topology.queues["email"].name
    for action in ("get", "consume"):
        error = await refused(broker.urls["api"], action, email_queue)
        assert_refused(error, f"queue '{email_queue}'", api)
    error = await refused(broker.urls["api"], "publish", broker.topology.orders_exchange)
    assert_refused(error, f"exchange '{broker.topology.orders_exchange}'", api)


async def test_operator_user_lists_the_event_log_and_backfills_one_queue(
    broker: Broker, admin: aio_pika.abc.AbstractChannel
) -> None:
    topology = broker.topology
    # An event in the log (published as the relay, which may).
    publisher = await Publisher.connect(broker.urls["relay"])
    event = order_paid_event(order_name="Event log permission check")
    message_id = uuid.uuid4()
    try:
        await publisher.publish(
            Outgoing.of(
                event,
                exchange=topology.orders_exchange,
                message_id=message_id,
                correlation_id=event.checkout_id,
            )
        )
    finally:
        await publisher.close()
    for name in ("invoice", "email", "production"):  # never consumed here
        await (await admin.get_queue(topology.queues[name].name)).purge()
    team = f"{broker.namespace}-team.{uuid.uuid4().hex[:6]}"  # another team's queue
    await admin.declare_queue(team, durable=True)
    connection = await aio_pika.connect(broker.urls["operator"])
    try:
        started = datetime.now(UTC)
        listing = await list_events(
            connection,
            topology.event_log,
            EventSelection(order_id=str(event.order_id)),
            started=started,
            patience=Patience(first=2.0, idle=0.5),
        )
        assert [e.message_id for e in listing.events] == [str(message_id)]
        outcome = await backfill(
            connection,
            topology.event_log,
            team,
            EventSelection(since_offset=listing.events[0].offset),
            started=datetime.now(UTC),
            patience=Patience(first=2.0, idle=0.5),
        )
        assert outcome.message_ids == [str(message_id)]
        [copy] = await take(admin, team, 1)
        assert copy.message_id == str(message_id)
    finally:
        await connection.close()
        await admin.queue_delete(team)


async def test_setup_user_declares_past_an_old_journal_it_may_not_touch(
    broker: Broker, admin: aio_pika.abc.AbstractChannel
) -> None:
    topology = broker.topology
    journal = await admin.declare_queue(topology.journal_queue, durable=True)
    await journal.bind(topology.orders_exchange, "order.#")
    try:
        # compose's broker-setup, on a broker upgraded from the journal: it still works,
        # and says how to remove the journal (its user has no rights on it any more).
        await compose_broker_setup(
            {"CHECKOUT_NAMESPACE": broker.namespace, "CHECKOUT_RABBIT_URL": broker.urls["setup"]}
        )
        connection = await aio_pika.connect(broker.urls["setup"])
        async with connection:
            note = await retire_journal(
                connection, topology.journal_queue, topology.orders_exchange
            )
        assert note is not None
        assert "could not be retired" in note
        assert f"rabbitmqctl delete_queue {topology.journal_queue}" in note
    finally:
        await admin.queue_delete(topology.journal_queue)
