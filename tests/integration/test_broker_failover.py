"""Failover across a list of broker URLs, and an older deployment's queues migrated.

Two fault proxies in front of the one local broker stand for two nodes of a cluster:
cutting one (its connections reset, new ones refused) is what a dead node looks like
to a client.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aiormq.exceptions import ChannelPreconditionFailed
from pydantic import SecretStr
from structlog.testing import capture_logs
from typer.testing import CliRunner

from checkout_api.testing import api_client
from consumers.main import build_worker as build_consumer
from infra import metrics
from infra.cli.main import app
from infra.messaging.connect import connect
from infra.messaging.publisher import Outgoing, Publisher, nacked
from infra.messaging.topology import (
    Topology,
    delete_topology,
    migrate_topology,
    queue_arguments,
)
from infra.settings import Settings, load_settings
from tests.faults.proxy import FaultProxy
from tests.support.amqp import private_queue, take
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

runner = CliRunner()


def _via(url: str, proxy: FaultProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{proxy.address}"))


@pytest.fixture
async def nodes(settings: Settings) -> AsyncIterator[tuple[FaultProxy, FaultProxy]]:
    parts = urlsplit(settings.rabbit_urls[0])
    proxies = [
        await FaultProxy(name, parts.hostname or "127.0.0.1", parts.port or 5672).start()
        for name in ("node-a", "node-b")
    ]
    yield proxies[0], proxies[1]
    for proxy in proxies:
        await proxy.close()


# What a publish raises while its node is away: anything else is a bug, not a reason
# to try again.
BROKER_AWAY = (
    aio_pika.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,  # a RuntimeError, not an AMQPError
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def _connected(name: str) -> float:
    return float(metrics.BROKER_CONNECTED.labels(name)._value.get())


async def test_a_publisher_moves_to_the_next_url_when_its_node_dies(
    settings: Settings,
    topology: Topology,
    rabbit: aio_pika.abc.AbstractRobustConnection,
    nodes: tuple[FaultProxy, FaultProxy],
) -> None:
    node_a, node_b = nodes
    url = settings.rabbit_urls[0]
    name = f"test.failover.{uuid.uuid4().hex[:6]}"
    publisher = await Publisher.connect(f"{_via(url, node_a)},{_via(url, node_b)}", name=name)
    channel = await rabbit.channel()
    downstream = await private_queue(channel, topology.orders_exchange, "order.failover")
    try:
        assert node_a.stats.connections == 1
        assert node_b.stats.connections == 0
        with capture_logs() as logs:
            node_a.refuse_for(60)  # node a is gone, and stays gone
            node_a.reset()

            async def published() -> bool:
                try:
                    await publisher.publish(
                        Outgoing(topology.orders_exchange, "order.failover", b"{}", "m", "c", "T")
                    )
                except BROKER_AWAY:
                    return False
                return True

            assert await eventually(published, timeout=20, what="a publish through node b")
        assert node_b.stats.connections >= 1
        assert _connected(name) == 1
        assert len(await take(channel, downstream.name, 1)) == 1
        lines = [(line["log_level"], line["event"]) for line in logs if "broker" in line["event"]]
        assert lines == [
            ("warning", "broker connection lost; reconnecting"),
            ("info", "broker connection restored"),
        ]
    finally:
        await publisher.close()
        await channel.close()


async def test_a_command_connects_to_the_first_url_that_answers(
    settings: Settings, nodes: tuple[FaultProxy, FaultProxy]
) -> None:
    node_a, node_b = nodes
    node_a.refuse_for(60)
    url = settings.rabbit_urls[0]
    connection = await connect(f"{_via(url, node_a)},{_via(url, node_b)}")
    async with connection:
        assert not connection.is_closed
    assert node_b.stats.connections == 1


async def _declare_classic(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> None:
    """The topology as an older release declared it: wait queues and DLQs classic."""
    for name, arguments in queue_arguments(topology):
        if ".wait." in name or name.endswith(".dlq"):
            classic = {
                k: v
                for k, v in arguments.items()
                if k not in ("x-queue-type", "x-dead-letter-strategy", "x-overflow")
            }
            await channel.declare_queue(name, durable=True, arguments=classic)


async def test_migrate_moves_classic_queues_to_quorum_keeping_their_messages(
    settings: Settings, rabbit: aio_pika.abc.AbstractRobustConnection
) -> None:
    old = load_settings(namespace=f"{settings.namespace}_mig", retry_delays="60")
    topology = Topology.from_settings(old)
    channel = await rabbit.channel()
    try:
        await _declare_classic(channel, topology)
        dlq, wait = topology.queues["email"].dlq, topology.queues["email"].wait_queue(1)
        for target, ident in ((dlq, "dead-1"), (dlq, "dead-2"), (wait, "waiting-1")):
            await channel.default_exchange.publish(
                aio_pika.Message(b"{}", message_id=ident, headers={"x-attempt": 2}), target
            )

        moved = await migrate_topology(old)

        assert moved[dlq] == 2
        assert moved[wait] == 1
        dead = await take(channel, dlq, 2)
        assert [m.message_id for m in dead] == ["dead-1", "dead-2"]
        assert dead[0].headers["x-attempt"] == 2
        assert [m.message_id for m in await take(channel, wait, 1)] == ["waiting-1"]
        # Now quorum: declaring them classic again is refused.
        probe = await rabbit.channel()
        with pytest.raises(ChannelPreconditionFailed):
            await probe.declare_queue(dlq, durable=True)
        assert await migrate_topology(old) == {}  # nothing left to move
    finally:
        cleanup = await rabbit.channel()
        await delete_topology(cleanup, topology)
        await cleanup.close()
        await asyncio.gather(channel.close(), return_exceptions=True)


async def test_a_reconnect_declares_nothing_so_a_changed_queue_cannot_block_it(
    settings: Settings,
    rabbit: aio_pika.abc.AbstractRobustConnection,
    nodes: tuple[FaultProxy, FaultProxy],
) -> None:
    """A queue that can no longer be declared as the parts declare it (here: redeclared
    with other arguments; in a cluster: its home node down) does not keep a consumer
    process's connections from coming back after they are lost: the topology was
    declared apart, at start, so aio-pika has nothing to re-declare."""
    node_a, _ = nodes
    run = load_settings(
        namespace=f"{settings.namespace}_redecl",
        rabbit_url=_via(settings.rabbit_urls[0], node_a),
    )
    topology = Topology.from_settings(run)
    channel = await rabbit.channel()
    worker = build_consumer(run, "email")
    try:
        async with worker.running():
            names = [f"{run.namespace}.consumer-email", f"{run.namespace}.consumer-email.publisher"]
            assert [_connected(n) for n in names] == [1, 1]
            dlq = topology.queues["email"].dlq
            await channel.queue_delete(dlq)
            await channel.declare_queue(dlq, durable=True)  # classic: a re-declare fails
            node_a.reset()

            async def connected() -> list[float]:
                return [_connected(n) for n in names]

            await eventually(connected, until=lambda c: c == [1, 1], timeout=20)
            assert node_a.stats.connections_reset >= 2

            async def consumers() -> int:
                probe = await rabbit.channel()
                async with probe:
                    queue = await probe.declare_queue(topology.queues["email"].name, passive=True)
                    return queue.declaration_result.consumer_count or 0

            await eventually(consumers, until=lambda n: n == 1, what="consuming again")
    finally:
        await delete_topology(channel, topology)
        await channel.close()


def _classic_deployment(url: str, topology: Topology, dead: int) -> None:
    """An older release's queues, with `dead` messages in the email DLQ."""

    async def setup() -> None:
        connection = await connect(url)
        async with connection:
            channel = await connection.channel()
            await _declare_classic(channel, topology)
            for i in range(dead):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"{}", message_id=f"dead-{i}"), topology.queues["email"].dlq
                )

    asyncio.run(setup())


def _remove(url: str, topology: Topology) -> None:
    async def remove() -> None:
        connection = await connect(url)
        async with connection:
            await delete_topology(await connection.channel(), topology)

    asyncio.run(remove())


def test_checkout_declare_says_to_migrate_then_migrates(settings: Settings) -> None:
    env = {"CHECKOUT_NAMESPACE": f"{settings.namespace}_cli", "CHECKOUT_RETRY_DELAYS": "60"}
    topology = Topology.from_settings(
        load_settings(namespace=env["CHECKOUT_NAMESPACE"], retry_delays="60")
    )
    url = settings.rabbit_urls[0]
    _classic_deployment(url, topology, dead=2)
    try:
        refused = runner.invoke(app, ["declare"], env=env)
        assert refused.exit_code == 1
        assert "inequivalent arg" in refused.stderr
        assert refused.stderr.strip().endswith(
            "stop the parts and run `checkout declare --migrate` to move them over"
        )

        migrated = runner.invoke(app, ["declare", "--migrate"], env=env)
        assert migrated.exit_code == 0, migrated.output
        lines = migrated.stdout.splitlines()
        assert f"{topology.queues['email'].dlq}: migrated, 2 messages moved" in lines
        assert lines[-1] == f"broker topology of namespace {env['CHECKOUT_NAMESPACE']} declared"

        again = runner.invoke(app, ["declare"], env=env)
        assert again.exit_code == 0, again.output
    finally:
        _remove(url, topology)


async def test_a_migration_cut_short_is_finished_by_running_it_again(
    settings: Settings, rabbit: aio_pika.abc.AbstractRobustConnection
) -> None:
    run = load_settings(namespace=f"{settings.namespace}_cut", retry_delays="60")
    topology = Topology.from_settings(run)
    dlq = topology.queues["email"].dlq
    channel = await rabbit.channel()
    try:
        # Cut short after the DLQ's messages were moved out and the queue deleted.
        holding = await channel.declare_queue(
            dlq + ".migrating", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="parked"), holding.name
        )

        moved = await migrate_topology(run)

        assert moved == {dlq: 1}
        assert [m.message_id for m in await take(channel, dlq, 1)] == ["parked"]
        probe = await rabbit.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await probe.declare_queue(holding.name, passive=True)
    finally:
        cleanup = await rabbit.channel()
        await delete_topology(cleanup, topology)
        await cleanup.close()
        await asyncio.gather(channel.close(), return_exceptions=True)


async def test_the_api_reports_its_broker_connection_and_fails_over(
    settings: Settings, nodes: tuple[FaultProxy, FaultProxy]
) -> None:
    node_a, node_b = nodes
    url = settings.rabbit_urls[0]
    listed = settings.model_copy(
        update={"rabbit_url": SecretStr(f"{_via(url, node_a)},{_via(url, node_b)}")}
    )
    name = f"{settings.namespace}.api"
    async with api_client(listed) as client:
        await eventually(lambda: client.get("/health/ready"), until=lambda r: r.status_code == 200)
        assert _connected(name) == 1
        node_a.refuse_for(60)
        node_a.reset()
        await eventually(
            lambda: asyncio.sleep(0, result=node_b.stats.connections),
            until=lambda n: n >= 1,
            what="the API's link on node b",
        )
        ready = await eventually(
            lambda: client.get("/health/ready"), until=lambda r: r.status_code == 200
        )
        assert ready.json()["checks"]["broker"] == "ok"
        assert _connected(name) == 1


async def test_the_relays_batch_path_replaces_a_channel_after_three_nacked_batches(
    settings: Settings, rabbit: aio_pika.abc.AbstractRobustConnection
) -> None:
    """Nacks for real on one node: a full quorum queue that rejects publishes. (A fresh
    channel cannot help there; what is tested is that the batch path counts and acts.)"""
    channel = await rabbit.channel()
    name = f"{settings.namespace}.full.{uuid.uuid4().hex[:6]}"
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"},
    )
    publisher = await Publisher.connect(settings.rabbit_urls[0], name="t.full")
    message = Outgoing("", name, b"{}", "m", "c", "T")
    try:
        first_channel = publisher.channel
        # The queue takes a message or two (its length is checked after the fact) ...
        for _ in range(10):
            [outcome] = await publisher.publish_many([message])
            if outcome is not None:
                break
        assert nacked(outcome)
        # ... then nacks: three batches in a row nacked, none acked.
        for _ in range(2):
            [outcome] = await publisher.publish_many([message])
            assert nacked(outcome)
        assert publisher.channels_renewed == 0  # not before it has to publish again
        await queue.purge()
        assert await publisher.publish_many([message]) == [None]
        assert publisher.channels_renewed == 1
        assert publisher.channel is not first_channel
        assert first_channel.is_closed
    finally:
        await publisher.close()
        await channel.queue_delete(name)
        await channel.close()
