"""The relay's LISTEN on a connection of its own, and its warning when NOTIFY is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from infra.db.migrate import libpq_url
from infra.db.models import OutboxMessage
from infra.db.session import UnitOfWork
from infra.messaging.outbox import add_to_outbox
from infra.messaging.publisher import Publisher
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.settings import Settings
from tests.support.polling import eventually
from tests.support.seed import order_paid_event

pytestmark = pytest.mark.integration

LOST = "outbox rows found only by the poll, no NOTIFY for a while"


@asynccontextmanager
async def _running(relay: OutboxRelay) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def _add_row(uow: UnitOfWork) -> None:
    async with uow() as session:
        event = order_paid_event()
        add_to_outbox(session, event, correlation_id=event.checkout_id)
        await session.commit()


async def _outbox_empty(engine: AsyncEngine) -> Callable[[], object]:
    async def probe() -> bool:
        async with engine.connect() as conn:
            count = await conn.execute(select(func.count()).select_from(OutboxMessage))
            return count.scalar_one() == 0

    return probe


async def test_rows_found_only_by_the_poll_are_reported_once(
    settings: Settings, uow: UnitOfWork, clean_db: AsyncEngine, topology: Topology
) -> None:
    database_url = libpq_url(settings.database_url.get_secret_value())
    # LISTEN in another database of the server: accepted, and nothing ever arrives,
    # as through a pooler in transaction mode.
    elsewhere = libpq_url(settings.database_url.get_secret_value(), "postgres")
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    relay = OutboxRelay(
        database_url,
        publisher,
        topology,
        poll_interval=0.05,
        listen_url=elsewhere,
        notify_silence_s=0.3,
    )
    empty = await _outbox_empty(clean_db)
    try:
        with capture_logs() as logs:
            async with _running(relay):
                deadline = time.monotonic() + 15
                while not any(line["event"].startswith(LOST) for line in logs):
                    assert time.monotonic() < deadline, "no warning about NOTIFY"
                    await _add_row(uow)
                    await eventually(empty, what="the row published by the poll")
                for _ in range(3):  # the spell goes on: said once
                    await _add_row(uow)
                    await eventually(empty, what="the row published by the poll")
        warnings = [line for line in logs if line["event"].startswith(LOST)]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
    finally:
        await relay.close()
        await publisher.close()


async def test_with_a_direct_listen_url_a_row_goes_out_long_before_the_poll(
    settings: Settings, uow: UnitOfWork, clean_db: AsyncEngine, topology: Topology
) -> None:
    database_url = libpq_url(settings.database_url.get_secret_value())
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    relay = OutboxRelay(
        database_url, publisher, topology, poll_interval=60, listen_url=database_url
    )
    empty = await _outbox_empty(clean_db)
    try:
        with capture_logs() as logs:
            async with _running(relay):
                await eventually(
                    lambda: asyncio.sleep(0, result=any("listening" in x["event"] for x in logs)),
                    what="the relay listening",
                )
                started = time.monotonic()
                await _add_row(uow)
                await eventually(empty, timeout=10, what="the row published on NOTIFY")
                assert time.monotonic() - started < 5  # the poll would take 60 s
        assert not any(line["event"].startswith(LOST) for line in logs)
    finally:
        await relay.close()
        await publisher.close()
