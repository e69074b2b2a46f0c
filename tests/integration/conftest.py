"""Fixtures for integration tests: the whole pipeline in one process.

API (in-process), relay, saga with the payment step, and the three consumers run in
the test's event loop against the real PostgreSQL and RabbitMQ; the simulated
services are served by uvicorn on a free port. The fixture is per module, and each
test uses its own orders.

Work a module leaves behind (an outbox row not yet published, a deadline, a message in
a queue) is removed after it, so no later module's relay or saga acts on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aio_pika
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.testing import api_client
from consumers.main import build_worker as build_consumer
from infra.db.migrate import libpq_url
from infra.db.session import UnitOfWork, create_pool
from infra.messaging.publisher import Publisher
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.settings import Settings, load_settings
from mock_services.app import create_app as create_mocks
from saga.main import build_worker as build_saga
from tests.support.amqp import purge_all
from tests.support.pipeline import Pipeline
from tests.support.servers import serving

SLOW_SECONDS = 2.5  # the .03 payment; the client's timeout below is shorter


@pytest.fixture(scope="module", autouse=True)
async def leave_no_work_behind(
    engine: AsyncEngine, topology: Topology, rabbit: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[None]:
    """After the module (and its pipeline, set up after this): no outbox row, no deadline
    and no queued message left for a later module's relay or saga to act on."""
    yield
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE outbox, deadlines"))
    channel = await rabbit.channel()
    await purge_all(channel, topology)
    await channel.close()


@pytest.fixture(scope="module")
async def pipeline(
    settings: Settings, engine: AsyncEngine, topology: Topology
) -> AsyncIterator[Pipeline]:
    async with AsyncExitStack() as stack:
        mocks_url = await stack.enter_async_context(
            serving(create_mocks(settings, slow_response_seconds=SLOW_SECONDS))
        )
        run_settings = load_settings(
            payment_url=mocks_url,
            email_url=mocks_url,
            production_url=mocks_url,
            http_timeout=1.0,
            breaker_pause=0.2,  # an outage in a test must not keep the breaker open long
        )
        publisher = await Publisher.connect(run_settings.rabbit_url.get_secret_value())
        stack.push_async_callback(publisher.close)
        relay = OutboxRelay(
            libpq_url(run_settings.database_url.get_secret_value()),
            publisher,
            topology,
            poll_interval=0.5,
        )
        stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(stop))

        async def stop_relay() -> None:
            stop.set()
            await relay_task

        stack.push_async_callback(stop_relay)
        await stack.enter_async_context(build_saga(run_settings).running())
        for name in ("invoice", "email", "production"):
            await stack.enter_async_context(build_consumer(run_settings, name).running())
        api = await stack.enter_async_context(api_client(run_settings))
        mocks = await stack.enter_async_context(httpx.AsyncClient(base_url=mocks_url))
        yield Pipeline(run_settings, api, mocks, publisher, engine)


@pytest.fixture
async def hot_uow(engine: AsyncEngine, settings: Settings) -> AsyncIterator[UnitOfWork]:
    """A unit of work on a psycopg pool of its own, as the parts run their hot paths."""
    pool = create_pool(settings, max_size=4)
    await pool.open()
    try:
        yield UnitOfWork(engine, pool)
    finally:
        await pool.close()


@pytest.fixture
async def channel(
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel (publisher confirms on) on the session's connection, closed after the test."""
    channel = await rabbit.channel()
    yield channel
    await channel.close()


@pytest.fixture
async def relay(settings: Settings, topology: Topology) -> AsyncIterator[OutboxRelay]:
    """An outbox relay that runs only when the test calls `relay.drain()`."""
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    relay = OutboxRelay(libpq_url(settings.database_url.get_secret_value()), publisher, topology)
    yield relay
    await relay.close()
    await publisher.close()


@pytest.fixture
async def team_queue(channel: aio_pika.abc.AbstractChannel) -> AsyncIterator[str]:
    """A new subscriber's durable queue, not bound to anything yet; deleted after the test."""
    name = f"team-{uuid.uuid4().hex[:8]}.order-paid"
    await channel.declare_queue(name, durable=True)
    yield name
    await channel.queue_delete(name)
