"""The event log survives a restart of RabbitMQ, with every event and its properties.

Never on the machine's shared broker: the test starts a throwaway node of its own
(`tests.support.rabbit_node`), declares the topology there as a part does, publishes
events to `{ns}.orders` as the relay does (mandatory, confirmed), stops the node the
way an operator would, starts it again on the same data, and reads the log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.messaging.connect import connect
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import Topology, declare_topology
from operations.events.errors import LogNotDeclared
from operations.events.listing import list_events
from operations.events.reading import Patience
from operations.events.selection import EventSelection
from tests.support.polling import eventually
from tests.support.rabbit_node import RabbitNode, find_server
from tests.support.seed import order_paid_event

pytestmark = pytest.mark.e2e


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RabbitNode]:
    server = find_server()
    if server is None:
        pytest.skip(
            "no rabbitmq-server installed to start a throwaway node "
            "(set CHECKOUT_TEST_RABBITMQ_SERVER to its script)"
        )
    started = RabbitNode(server, tmp_path / "rabbit")
    await asyncio.to_thread(started.start)
    yield started
    await asyncio.to_thread(started.remove)


async def _read(url: str, topology: Topology) -> list[tuple[int, str | None, str | None]]:
    connection = await connect(url)
    try:
        listing = await list_events(
            connection,
            topology.event_log,
            EventSelection(),
            started=datetime.now(UTC),
            patience=Patience(first=10.0, idle=1.0),
        )
    finally:
        await connection.close()
    return [(e.offset, e.message_id, e.message_type) for e in listing.events]


async def test_the_log_keeps_its_events_across_a_broker_restart(node: RabbitNode) -> None:
    topology = Topology(f"restart_{uuid.uuid4().hex[:6]}", (1000,), 30)
    connection = await connect(node.url)
    await declare_topology(await connection.channel(), topology)
    await connection.close()
    publisher = await Publisher.connect(node.url)
    for _ in range(5):
        event = order_paid_event()
        await publisher.publish(
            Outgoing.of(
                event,
                exchange=topology.orders_exchange,
                message_id=uuid.uuid4(),
                correlation_id=event.checkout_id,
            )
        )
    await publisher.close()
    before = await _read(node.url, topology)
    assert len(before) == 5

    await asyncio.to_thread(node.stop)
    await asyncio.to_thread(node.start)

    # A restarted node accepts connections before it has brought its streams back (each
    # stream's members start after it): until then a passive declare says NOT_FOUND.
    async def read_when_back() -> list[tuple[int, str | None, str | None]] | None:
        try:
            return await _read(node.url, topology)
        except LogNotDeclared:
            return None

    after = await eventually(
        read_when_back, until=lambda r: r is not None, timeout=60, what="the log back"
    )
    assert after == before
    # Declaring the topology again after the restart finds the same stream.
    connection = await connect(node.url)
    await declare_topology(await connection.channel(), topology)
    await connection.close()
    assert await _read(node.url, topology) == before
