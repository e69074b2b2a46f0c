"""The console's event log page over HTTP: recent events and an order's (nothing
consumed), and the backfill form: a dry run's count, a real copy into one team's queue
recorded in the audit log with the key's name, and every refusal."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import AsyncIterator
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
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.dlq import audit
from tests.support.amqp import depth, take
from tests.support.polling import eventually
from tests.support.seed import publish_paid

pytestmark = pytest.mark.integration

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def operator(
    settings: Settings, engine: AsyncEngine
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    name = f"events-{uuid.uuid4().hex[:8]}"
    made = await create_key(engine, name, Role.operator)
    async with running(create_app(settings)) as client:
        assert (await client.post("/console/sign-in", data={"api_key": made.token})).is_redirect
        found = CSRF.search((await client.get("/console/events")).text)
        assert found is not None
        yield client, name, found.group(1)


async def test_the_page_lists_recent_events_and_an_orders_events_consuming_nothing(
    operator: tuple[httpx.AsyncClient, str, str], uow: UnitOfWork, relay: OutboxRelay
) -> None:
    client, _, _ = operator
    (first, first_order), (second, _) = await publish_paid(uow, relay, 2)

    async def listed() -> str:
        page = await client.get("/console/events", params={"since": "10m", "types": "OrderPaid"})
        assert page.status_code == 200
        return page.text

    text = await eventually(
        listed, until=lambda t: first in t and second in t, what="both events listed"
    )
    assert re.search(r'id="matched">\d+ events match', text)
    assert f'href="/console/orders/{first_order}"' in text
    assert "x-schema-version" in unescape(text)  # the headers, shown with the body
    # Nothing consumed: the same events are listed again, and an order's alone.
    again = await listed()
    assert first in again
    assert second in again
    only = await client.get("/console/events", params={"since": "", "order": first_order})
    assert first in only.text
    assert second not in only.text
    assert 'id="matched">1 event matches' in only.text


async def test_a_bad_time_is_refused_saying_what_is_accepted(
    operator: tuple[httpx.AsyncClient, str, str],
) -> None:
    client, _, _ = operator
    bad = await client.get("/console/events", params={"since": "yesterday"})
    assert bad.status_code == 400
    assert "RFC 3339" in unescape(bad.text)
    backwards = await client.get("/console/events", params={"since": "1h", "until": "2h"})
    assert backwards.status_code == 400
    assert "until is before since" in backwards.text


async def test_a_dry_run_counts_then_a_backfill_copies_into_the_queue_and_is_audited(
    operator: tuple[httpx.AsyncClient, str, str],
    uow: UnitOfWork,
    relay: OutboxRelay,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    client, name, csrf = operator
    sent = [message_id for message_id, _ in await publish_paid(uow, relay, 2)]

    async def listed() -> str:
        return (await client.get("/console/events", params={"since": "10m"})).text

    await eventually(listed, until=lambda t: all(m in t for m in sent), what="events in the log")
    form = {
        "csrf_token": csrf,
        "to_queue": team_queue,
        "since": "10m",
        "types": "OrderPaid",
        "reason": "billing joined late",
    }

    dry = await client.post("/console/events/backfill", data={**form, "dry_run": "1"})

    assert dry.status_code == 200, dry.text
    would = re.search(r"would copy (\d+) events? from \S+ to " + team_queue, dry.text)
    assert would is not None
    assert int(would.group(1)) >= 2
    assert all(m in dry.text for m in sent)  # the events a dry run would copy are listed
    assert await depth(channel, team_queue) == 0

    done = await client.post("/console/events/backfill", data={**form, "rate": "500"})

    assert done.status_code == 200, done.text
    copied = re.search(r"Copied (\d+) events? from \S+ to " + team_queue, done.text)
    assert copied is not None
    count = int(copied.group(1))
    assert count >= 2
    assert await depth(channel, team_queue) == count
    ids = {m.message_id for m in await take(channel, team_queue, count)}
    assert set(sent) <= ids
    [record] = [
        r for r in await audit.history(uow) if r.action == "backfill" and r.queue == team_queue
    ]
    assert (record.actor, record.reason, record.messages) == (name, "billing joined late", count)
    # From an offset past the log's end (a resume with nothing left): nothing to copy.
    resumed = await client.post(
        "/console/events/backfill", data={**form, "since_offset": "1000000000", "dry_run": "1"}
    )
    assert resumed.status_code == 200
    assert "would copy 0 events" in resumed.text
    log = await client.get("/console/audit")
    assert f"→ {team_queue}" in log.text
    assert "billing joined late" in log.text


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"reason": " "}, "reason is required"),
        ({"since": ""}, "since is required"),
        ({"since": "yesterday"}, "RFC 3339"),
        ({"rate": "0"}, "positive number"),
        ({"to_queue": ""}, "name the queue"),
        ({"since_offset": "x"}, "whole number"),
        ({"since_offset": "-1"}, "offset to resume from must be 0 or more"),
        ({"to_queue": "no-such-queue-{tag}"}, "does not exist"),
        ({"to_queue": "{ns}.payment.dlq"}, "take no public events"),
        ({"to_queue": "{ns}.orders.log"}, "is the event log itself"),
    ],
)
async def test_a_backfill_that_cannot_be_done_is_refused_and_copies_nothing(
    operator: tuple[httpx.AsyncClient, str, str],
    uow: UnitOfWork,
    topology: Topology,
    team_queue: str,
    changes: dict[str, str],
    says: str,
) -> None:
    client, _, csrf = operator
    tag = uuid.uuid4().hex[:8]
    form = {
        "csrf_token": csrf,
        "to_queue": team_queue,
        "since": "10m",
        "reason": "try",
        **{k: v.format(tag=tag, ns=topology.namespace) for k, v in changes.items()},
    }
    before = len(await audit.history(uow))

    refused = await client.post("/console/events/backfill", data=form)

    assert refused.status_code == 400
    assert says in unescape(refused.text)
    assert 'href="/console/events">Back to the event log' in refused.text
    assert len(await audit.history(uow)) == before


async def test_a_backfill_posted_without_the_sessions_token_is_refused(
    operator: tuple[httpx.AsyncClient, str, str], team_queue: str
) -> None:
    client, _, _ = operator
    refused = await client.post(
        "/console/events/backfill",
        data={"to_queue": team_queue, "since": "10m", "reason": "try", "csrf_token": "x"},
    )
    assert refused.status_code == 403


async def test_without_the_broker_the_log_cannot_be_read_and_nothing_is_backfilled(
    settings: Settings, engine: AsyncEngine, uow: UnitOfWork
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = settings.model_copy(
        update={"rabbit_url": SecretStr(f"amqp://guest:guest@127.0.0.1:{port}/")}
    )
    made = await create_key(engine, f"events-{uuid.uuid4().hex[:8]}", Role.operator)
    before = len(await audit.history(uow))
    async with running(create_app(nowhere)) as client:
        await client.post("/console/sign-in", data={"api_key": made.token})
        listing = await client.get("/console/events")
        assert listing.status_code == 503
        assert "RabbitMQ is not connected" in listing.text
        found = CSRF.search(listing.text)
        assert found is not None
        backfill = await client.post(
            "/console/events/backfill",
            data={
                "csrf_token": found.group(1),
                "to_queue": "someone",
                "since": "1h",
                "reason": "try",
            },
        )
    assert backfill.status_code == 503
    assert "RabbitMQ is not connected" in backfill.text
    assert len(await audit.history(uow)) == before
