"""The console's stuck page over HTTP: the list of `checkout stuck` with its older-than
filter, a parked charge's replay from it (the dead-letters page's replay, audited with
the key's name), and the overview's stuck count linking to it."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from html import unescape

import aio_pika
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.app import create_app
from checkout_api.testing import running
from infra.auth.keys import Role, create_key
from infra.db.session import UnitOfWork
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.dlq import audit
from operations.stuck import stuck_report
from tests.support.amqp import depth
from tests.support.seed import aged, park_charge, pending_checkout

pytestmark = pytest.mark.integration

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _signed_in(client: httpx.AsyncClient, engine: AsyncEngine) -> tuple[str, str]:
    """Sign in with a new operator key; (its name, the session's CSRF token)."""
    name = f"stuck-{uuid.uuid4().hex[:8]}"
    made = await create_key(engine, name, Role.operator)
    assert (await client.post("/console/sign-in", data={"api_key": made.token})).status_code == 303
    found = CSRF.search((await client.get("/console/")).text)
    assert found is not None
    return name, found.group(1)


@pytest.fixture
async def operator(
    settings: Settings, engine: AsyncEngine
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    async with running(create_app(settings)) as client:
        name, csrf = await _signed_in(client, engine)
        yield client, name, csrf


def _item(html: str, saga_id: uuid.UUID) -> str:
    found = re.search(rf'<tbody class="stuck-item" id="stuck-{saga_id}">(.*?)</tbody>', html, re.S)
    assert found is not None, f"{saga_id} is not listed"
    return unescape(found.group(1))


async def test_a_stuck_checkout_is_listed_and_its_parked_charge_replayed_from_the_page(
    operator: tuple[httpx.AsyncClient, str, str],
    hot_uow: UnitOfWork,
    engine: AsyncEngine,
    purge_queues: Topology,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    client, name, csrf = operator
    queue = purge_queues.queues["payment"]
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 10)
    channel = await rabbit.channel(publisher_confirms=True)
    parked = await park_charge(channel, queue.name, charge)

    listed = await client.get("/console/stuck", params={"older_than": "5m"})

    assert listed.status_code == 200
    item = _item(listed.text, charge.checkout_id)
    assert "PAYMENT_PENDING" in item
    assert f'href="/console/orders/{charge.order_id}"' in item
    assert "payment deadline at" in item
    assert "checkout relay" in item  # the unpublished charge's repair
    assert f"in {queue.dlq}" in item
    assert "payment service answered 503: down" in item
    assert f'action="/console/dead-letters/{queue.name}/replay"' in item
    assert f'name="message_id" value="{parked}"' in item
    assert 'name="reason" required' in item

    no_reason = await client.post(
        f"/console/dead-letters/{queue.name}/replay",
        data={"csrf_token": csrf, "scope": "selected", "message_id": parked, "reason": ""},
    )
    assert no_reason.status_code == 400
    assert await depth(channel, queue.dlq) == 1

    replayed = await client.post(
        f"/console/dead-letters/{queue.name}/replay",
        data={
            "csrf_token": csrf,
            "scope": "selected",
            "message_id": parked,
            "back": "stuck",
            "reason": "payment service is back",
            "dry_run": "0",
        },
    )

    assert replayed.status_code == 200, replayed.text
    assert "Replayed 1 message" in replayed.text
    assert 'href="/console/stuck">Back to stuck work' in replayed.text
    assert await depth(channel, queue.dlq) == 0
    assert await depth(channel, queue.name) == 1
    await channel.close()
    [record] = [r for r in await audit.history(hot_uow) if parked in r.message_ids]
    assert (record.action, record.actor, record.reason) == (
        "replay",
        name,
        "payment service is back",
    )
    again = _item((await client.get("/console/stuck")).text, charge.checkout_id)
    assert "dead letter" not in again
    assert f'value="{parked}"' not in again


async def test_the_older_than_filter_and_a_bad_duration(
    operator: tuple[httpx.AsyncClient, str, str], hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    client, _, _ = operator
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 30)

    shown = await client.get("/console/stuck", params={"older_than": "20m"})
    assert f'id="stuck-{charge.checkout_id}"' in shown.text
    hidden = await client.get("/console/stuck", params={"older_than": "1h"})
    assert hidden.status_code == 200
    assert f'id="stuck-{charge.checkout_id}"' not in hidden.text
    nothing = await client.get("/console/stuck", params={"older_than": "3650d"})
    assert 'id="nothing-stuck"' in nothing.text
    bad = await client.get("/console/stuck", params={"older_than": "soon"})
    assert bad.status_code == 400
    assert "is not a duration" in unescape(bad.text)


async def test_the_overview_counts_stuck_work_and_links_the_stuck_page(
    operator: tuple[httpx.AsyncClient, str, str], hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    client, _, _ = operator
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 10)

    overview = await client.get("/console/")

    card = re.search(r'<section class="card" id="checkouts">(.*?)</section>', overview.text, re.S)
    assert card is not None
    link = re.search(r'<a href="/console/stuck\?older_than=5m">(\d+) not final', card.group(1))
    assert link is not None
    assert int(link.group(1)) >= 1
    assert 'href="/console/stuck"' in overview.text  # the navigation


async def test_without_the_broker_the_stuck_page_says_the_queues_were_not_read(
    settings: Settings, engine: AsyncEngine, hot_uow: UnitOfWork
) -> None:
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 10)
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = settings.model_copy(
        update={"rabbit_url": SecretStr(f"amqp://guest:guest@127.0.0.1:{port}/")}
    )
    async with running(create_app(nowhere)) as client:
        await _signed_in(client, engine)
        page = await client.get("/console/stuck")
    assert page.status_code == 200
    assert "Dead-letter queues not read: RabbitMQ is not connected" in page.text
    assert f'id="stuck-{charge.checkout_id}"' in page.text


async def test_a_broker_lost_while_the_queues_are_read_leaves_the_rest_of_the_report(
    settings: Settings, engine: AsyncEngine, hot_uow: UnitOfWork, topology: Topology
) -> None:
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 10)
    lost = await aio_pika.connect(settings.rabbit_url.get_secret_value())
    await lost.close()

    @asynccontextmanager
    async def opener(
        wanted: bool,
    ) -> AsyncIterator[tuple[aio_pika.abc.AbstractConnection | None, str | None]]:
        yield lost, None

    report = await stuck_report(engine, timedelta(minutes=5), opener, topology, None)

    assert report.dead_letters_read is False
    assert report.broker_error is not None
    assert report.broker_error.startswith("reading the dead-letter queues failed")
    [item] = [s for s in report.stuck if s.id == charge.checkout_id]
    assert {w.what for w in item.waiting} >= {"deadline", "outbox"}
