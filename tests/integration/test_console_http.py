"""The console over HTTP: sign-in, roles, the cookie, expiry, revocation, cross-site posts,
and a replay from the console audited with the key's name (CONTRACT.md section 10)."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api import lifespan
from checkout_api.app import create_app
from checkout_api.testing import running
from infra.auth.keys import Role, create_key, revoke_key
from infra.db.session import UnitOfWork
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.dlq import audit
from tests.support.amqp import depth
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


async def new_key(engine: AsyncEngine, role: Role) -> tuple[str, str]:
    name = f"console-{role.value}-{uuid.uuid4().hex[:8]}"
    made = await create_key(engine, name, role)
    return name, made.token


async def sign_in(client: httpx.AsyncClient, engine: AsyncEngine) -> tuple[str, str]:
    """Sign in with a new operator key; (its name, the CSRF token of the session)."""
    name, token = await new_key(engine, Role.operator)
    response = await client.post("/console/sign-in", data={"api_key": token})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/"
    page = await client.get("/console/")
    assert page.status_code == 200
    found = CSRF.search(page.text)
    assert found is not None
    return name, found.group(1)


async def test_pages_need_a_session(client: httpx.AsyncClient) -> None:
    for path in (
        "/console/",
        "/console/orders",
        "/console/dead-letters",
        "/console/stuck",
        "/console/events",
        "/console/keys",
    ):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/sign-in"
    assert (await client.get("/console")).headers["location"] == "/console/"
    page = await client.get("/console/sign-in")
    assert page.status_code == 200
    assert 'name="api_key"' in page.text


async def test_an_operator_signs_in_with_a_strict_httponly_expiring_cookie(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    _, token = await new_key(engine, Role.operator)
    response = await client.post("/console/sign-in", data={"api_key": token})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/console" in cookie.lower()
    assert token not in cookie  # the session's own token, not the API key
    assert "secure" not in attributes  # plain HTTP here; over HTTPS it is Secure
    overview = await client.get("/console/")
    assert overview.status_code == 200
    assert "Checkouts" in overview.text
    assert "Outbox" in overview.text
    assert 'http-equiv="refresh"' in overview.text
    csp = overview.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert overview.headers["cache-control"] == "no-store"
    # The API's request metrics name console pages by their whole route template.
    exported = (await client.get("/metrics")).text
    assert 'route="/console/",status="200"' in exported
    assert 'route="/console/sign-in",status="303"' in exported


async def test_over_https_the_cookie_is_secure(settings: Settings, engine: AsyncEngine) -> None:
    _, token = await new_key(engine, Role.operator)
    async with running(create_app(settings)) as client:
        client.base_url = httpx.URL("https://api.test")
        response = await client.post("/console/sign-in", data={"api_key": token})
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()


async def test_a_clerk_key_or_an_unknown_one_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    _, clerk = await new_key(engine, Role.clerk)
    refused = await client.post("/console/sign-in", data={"api_key": clerk})
    assert refused.status_code == 401
    assert "operator key" in refused.text
    assert "set-cookie" not in refused.headers
    unknown = await client.post("/console/sign-in", data={"api_key": "ck_nothing"})
    assert unknown.status_code == 401
    assert "unknown or revoked" in unknown.text
    assert (await client.get("/console/")).status_code == 303


async def test_an_expired_session_is_over(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await sign_in(client, engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE console_sessions SET expires_at = now() - interval '1 s'"))
    response = await client.get("/console/")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in"


async def test_revoking_the_key_ends_its_sessions(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    name, _ = await sign_in(client, engine)
    assert (await client.get("/console/orders")).status_code == 200
    await revoke_key(engine, name)
    assert (await client.get("/console/orders")).status_code == 303


async def test_sign_out_ends_the_session_for_good(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    _, csrf = await sign_in(client, engine)
    stolen = dict(client.cookies)
    response = await client.post("/console/sign-out", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in"
    # The old cookie opens nothing any more, even sent again.
    client.cookies.update(stolen)
    assert (await client.get("/console/")).status_code == 303


async def test_cross_site_posts_are_refused(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    name, csrf = await sign_in(client, engine)
    form = {"csrf_token": csrf, "name": "from-elsewhere", "role": "operator"}
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # another port of this host is another origin
    ):
        response = await client.post("/console/keys/new", data=form, headers=headers)
        assert response.status_code == 403, headers
    # Without the session's token (a forged form that somehow carries the cookie).
    no_token = await client.post("/console/keys/new", data={**form, "csrf_token": "x"})
    assert no_token.status_code == 403
    assert "token is missing or does not match your session: reload the page" in no_token.text
    # Sign-in from another site too (login CSRF).
    _, token = await new_key(engine, Role.operator)
    elsewhere = await client.post(
        "/console/sign-in", data={"api_key": token}, headers={"origin": "http://evil.example"}
    )
    assert elsewhere.status_code == 403
    keys = await client.get("/console/keys")
    assert "from-elsewhere" not in keys.text
    # The same form from the console itself works.
    made = await client.post("/console/keys/new", data=form, headers={"origin": "http://api.test"})
    assert made.status_code == 201
    assert re.search(r'<code id="new-token">ck_[\w-]+</code>', made.text)
    assert name in made.text


async def test_a_replay_from_the_console_is_the_clis_replay_audited_with_the_key_name(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    uow: UnitOfWork,
    purge_queues: Topology,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    queue = purge_queues.queues["production"]
    channel = await rabbit.channel(publisher_confirms=True)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for message_id in ids:
        await channel.default_exchange.publish(
            aio_pika.Message(
                b'{"order_id": "x"}',
                message_id=message_id,
                type="OrderPaid",
                headers={"x-error-type": "HTTPStatusError", "x-attempts": 5},
            ),
            queue.dlq,
            mandatory=True,
        )
    name, csrf = await sign_in(client, engine)

    shown = await client.get(f"/console/dead-letters/{queue.name}")
    assert shown.status_code == 200
    assert all(i in shown.text for i in ids)
    assert "&#34;order_id&#34;: &#34;x&#34;" in shown.text  # the body, escaped

    no_reason = await client.post(
        f"/console/dead-letters/{queue.name}/replay",
        data={"csrf_token": csrf, "scope": "selected", "message_id": ids[0], "reason": " "},
    )
    assert no_reason.status_code == 400
    assert "reason is required" in no_reason.text
    # Back to this queue's dead letters, where the selection was made, not the list.
    assert f'href="/console/dead-letters/{queue.name}">Back to {queue.dlq}' in no_reason.text

    dry = await client.post(
        f"/console/dead-letters/{queue.name}/replay",
        data={"csrf_token": csrf, "scope": "all", "reason": "look first", "dry_run": "1"},
    )
    assert dry.status_code == 200
    assert "would replay 2 messages" in dry.text
    assert await depth(channel, queue.dlq) == 2

    done = await client.post(
        f"/console/dead-letters/{queue.name}/replay",
        data={
            "csrf_token": csrf,
            "scope": "selected",
            "message_id": ids[0],
            "reason": "production is back",
            "rate": "50",
        },
    )
    assert done.status_code == 200, done.text
    assert "Replayed 1 message" in done.text
    # The message left unselected goes back to the quorum queue when the reading channel
    # closes: the queue may count it a moment after the page answered.
    await eventually(
        lambda: depth(channel, queue.dlq), until=lambda n: n == 1, what="the other one back"
    )
    assert await depth(channel, queue.name) == 1

    unconfirmed = await client.post(
        f"/console/dead-letters/{queue.name}/purge",
        data={"csrf_token": csrf, "scope": "selected", "message_id": ids[1], "reason": "junk"},
    )
    assert unconfirmed.status_code == 400
    assert f"Back to {queue.dlq}" in unconfirmed.text
    purged = await client.post(
        f"/console/dead-letters/{queue.name}/purge",
        data={
            "csrf_token": csrf,
            "scope": "selected",
            "message_id": ids[1],
            "reason": "test junk",
            "confirm": "yes",
        },
    )
    assert purged.status_code == 200
    assert await depth(channel, queue.dlq) == 0
    await channel.close()

    records = [r for r in await audit.history(uow) if set(r.message_ids) & set(ids)]
    assert [(r.action, r.actor, r.reason, r.messages) for r in records] == [
        ("purge", name, "test junk", 1),
        ("replay", name, "production is back", 1),
    ]
    log = await client.get("/console/audit")
    assert "production is back" in log.text
    assert name in log.text


async def test_without_the_broker_the_console_says_so_and_moves_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = settings.model_copy(
        update={"rabbit_url": SecretStr(f"amqp://guest:guest@127.0.0.1:{port}/")}
    )
    async with running(create_app(nowhere)) as client:
        _, csrf = await sign_in(client, engine)
        overview = await client.get("/console/")
        assert overview.status_code == 200
        assert "RabbitMQ is not connected" in overview.text
        assert "Checkouts" in overview.text  # the database part is still shown
        listing = await client.get("/console/dead-letters")
        assert listing.status_code == 503
        replay = await client.post(
            "/console/dead-letters/production/replay",
            data={"csrf_token": csrf, "scope": "all", "reason": "try"},
        )
        assert replay.status_code == 503
        assert "RabbitMQ is not connected" in replay.text


async def test_an_unknown_queue_is_not_found_and_not_acted_on(
    client: httpx.AsyncClient, engine: AsyncEngine, topology: Topology
) -> None:
    _, csrf = await sign_in(client, engine)
    assert (await client.get("/console/dead-letters/nonsense")).status_code == 404
    replay = await client.post(
        "/console/dead-letters/nonsense/replay",
        data={"csrf_token": csrf, "scope": "all", "reason": "try"},
    )
    assert replay.status_code == 400
    assert "nonsense" in replay.text
    assert 'href="/console/dead-letters">Back to the dead letters' in replay.text
    bad_rate = await client.post(
        "/console/dead-letters/production/replay",
        data={"csrf_token": csrf, "scope": "all", "reason": "try", "rate": "-1"},
    )
    assert bad_rate.status_code == 400
    assert "positive number" in bad_rate.text
    nothing_selected = await client.post(
        "/console/dead-letters/production/replay",
        data={"csrf_token": csrf, "scope": "selected", "reason": "try"},
    )
    assert nothing_selected.status_code == 400
    assert "select at least one message" in nothing_selected.text


async def test_without_the_database_nobody_is_signed_in_and_the_page_says_why(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = await new_key(engine, Role.operator)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = settings.model_copy(
        update={"database_url": SecretStr(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")}
    )
    monkeypatch.setattr(lifespan, "POOL_TIMEOUT_S", 0.5)  # fail fast; the wait isn't tested
    async with running(create_app(nowhere)) as client:
        client.cookies.set("checkout_console", "a-session-from-before", path="/console")
        page = await client.get("/console/")
        assert page.status_code == 503
        assert "database is unreachable" in page.text
        signing_in = await client.post("/console/sign-in", data={"api_key": token})
        assert signing_in.status_code == 503
        assert "set-cookie" not in signing_in.headers


async def test_a_dead_letter_links_to_the_order_it_is_about(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    purge_queues: Topology,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    queue = purge_queues.queues["email"]
    order_id = str(uuid.uuid4())
    channel = await rabbit.channel(publisher_confirms=True)
    await channel.default_exchange.publish(
        aio_pika.Message(
            f'{{"order_id": "{order_id}"}}'.encode(),
            message_id=str(uuid.uuid4()),
            type="OrderPaid",
        ),
        queue.dlq,
        mandatory=True,
    )
    await channel.close()
    await sign_in(client, engine)

    shown = await client.get(f"/console/dead-letters/{queue.name}")

    assert shown.status_code == 200
    assert f'<a href="/console/orders/{order_id}">order {order_id}</a>' in shown.text
