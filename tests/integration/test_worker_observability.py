"""A worker's health and metrics endpoint, and metrics that move as messages flow."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
import structlog
import structlog.testing

from consumers.main import build_worker
from contracts import OrderPaid
from infra.db.migrate import libpq_url
from infra.db.session import UnitOfWork
from infra.messaging.connect import connection_lost
from infra.messaging.outbox import add_to_outbox
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.metrics import registry_for
from infra.settings import Settings
from tests.support.polling import eventually
from tests.support.seed import paid_order

pytestmark = pytest.mark.integration


async def _paid_order(uow: UnitOfWork) -> OrderPaid:
    return await paid_order(uow, name="Metrics poster", email="m@example.com", customer_name="M")


def _value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_consumer_serves_health_and_counts_done_and_duplicate(
    settings: Settings,
    uow: UnitOfWork,
    topology: Topology,
) -> None:
    event = await _paid_order(uow)
    queue = topology.queues["invoice"].name
    worker = build_worker(settings, "invoice")
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    try:
        async with (
            worker.running(),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.health_port}") as client,
        ):
            assert (await client.get("/health/live")).status_code == 200
            ready = await client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"broker": "ok", "database": "ok"}
            # Each process exports what it measures: the relay's outbox gauges are not
            # the invoice consumer's to report (nor are service calls: it makes none).
            exported = (await client.get("/metrics")).text
            assert "checkout_outbox_pending_rows" not in exported
            assert "checkout_service_calls_total" not in exported
            assert "checkout_consumer_messages_total" in exported

            async def metrics() -> str:
                return (await client.get("/metrics")).text

            before = await metrics()
            outgoing = Outgoing.of(
                event,
                exchange=topology.orders_exchange,
                message_id=uuid.uuid4(),
                correlation_id=event.checkout_id,
            )
            await publisher.publish(outgoing)
            after = await eventually(
                metrics,
                what="a done message counted",
                until=lambda t: (
                    _value(t, "checkout_consumer_messages_total", queue=queue, outcome="done")
                    > _value(
                        before, "checkout_consumer_messages_total", queue=queue, outcome="done"
                    )
                ),
            )
            await publisher.publish(outgoing)  # the same message again
            await eventually(
                metrics,
                what="a duplicate counted",
                until=lambda t: (
                    _value(t, "checkout_consumer_messages_total", queue=queue, outcome="duplicate")
                    > _value(
                        after, "checkout_consumer_messages_total", queue=queue, outcome="duplicate"
                    )
                ),
            )
            text = await metrics()
            assert "checkout_consumer_handling_seconds_bucket" in text
            # One set of counters per message: the shell's, not FastStream's as well.
            assert "faststream_received_messages_total" not in text
    finally:
        await publisher.close()


async def test_the_relay_counts_what_it_publishes(
    settings: Settings,
    uow: UnitOfWork,
    topology: Topology,
) -> None:
    event = await _paid_order(uow)
    labels = {"exchange": "orders", "routing_key": "order.paid"}
    relay_metrics = registry_for("relay")  # what the relay serves at /metrics
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    relay = OutboxRelay(libpq_url(settings.database_url.get_secret_value()), publisher, topology)
    try:
        # Rows earlier tests of the run left unpublished go first: only ours is counted.
        await relay.drain()
        before = relay_metrics.get_sample_value("checkout_messages_published_total", labels) or 0
        lag_before = relay_metrics.get_sample_value("checkout_relay_lag_seconds_count") or 0.0
        async with uow() as session:
            add_to_outbox(session, event, correlation_id=event.checkout_id)
            await session.commit()
        moved = await relay.drain()
    finally:
        await relay.close()
        await publisher.close()
    assert moved == 1
    after = relay_metrics.get_sample_value("checkout_messages_published_total", labels) or 0.0
    assert after - before == 1
    assert (relay_metrics.get_sample_value("checkout_relay_lag_seconds_count") or 0.0) > lag_before


async def test_stopping_a_worker_is_not_reported_as_a_lost_connection(settings: Settings) -> None:
    """A normal shutdown closes the broker connections on purpose: no warning about them
    (an operator reading the logs of a Ctrl-C would take it for a fault)."""
    worker = build_worker(settings, "invoice")
    with structlog.testing.capture_logs() as logs:
        async with worker.running():
            pass
    lost = [entry for entry in logs if "connection lost" in entry["event"]]
    assert lost == []


def test_only_a_loss_counts_as_a_lost_connection() -> None:
    assert not connection_lost(None)
    assert not connection_lost(asyncio.CancelledError())  # closed on purpose
    assert connection_lost(ConnectionResetError("reset by peer"))
