"""`CHECKOUT_DATABASE_PREPARE=auto` against the real database: the hot paths' connections
prepare when they reach PostgreSQL itself, and never through something in between."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from infra.db.migrate import libpq_url
from infra.db.preparation import PREPARE_THRESHOLD
from infra.db.session import create_pool
from infra.messaging.publisher import Publisher
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.settings import Settings
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def tcp_proxy(host: str, port: int) -> AsyncIterator[int]:
    """A TCP proxy on a port of its own in front of `host:port`, as a pooler would be."""
    proxy = await FaultProxy("postgres", host, port).start()
    try:
        yield proxy.port
    finally:
        await proxy.close()


def _through(settings: Settings, port: int, **changes: Any) -> Settings:
    url = make_url(settings.database_url.get_secret_value()).set(host="127.0.0.1", port=port)
    update = {"database_url": SecretStr(url.render_as_string(hide_password=False)), **changes}
    return settings.model_copy(update=update)


def _server(settings: Settings) -> tuple[str, int]:
    url = make_url(settings.database_url.get_secret_value())
    return url.host or "127.0.0.1", url.port or 5432


async def _prepared_after_runs(conn: psycopg.AsyncConnection[Any]) -> int:
    """Run one statement more often than psycopg's threshold; how many statements the
    server then holds prepared for this connection."""
    for n in range(PREPARE_THRESHOLD + 2):
        await conn.execute("SELECT %s::int + 1", (n,))
    cursor = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
    row = await cursor.fetchone()
    await conn.rollback()
    assert row is not None
    return int(row[0])


async def _pooled(settings: Settings) -> tuple[Any, int]:
    pool = create_pool(settings, max_size=1)
    await pool.open(wait=True, timeout=10)
    try:
        conn = await pool.getconn()
        try:
            return conn.prepare_threshold, await _prepared_after_runs(conn)
        finally:
            await pool.putconn(conn)
    finally:
        await pool.close()


async def test_a_pool_straight_to_postgresql_prepares(settings: Settings) -> None:
    assert settings.database_prepare == "auto"
    threshold, prepared = await _pooled(settings)
    assert threshold == PREPARE_THRESHOLD
    assert prepared >= 1


async def test_a_pool_through_a_proxy_prepares_nothing(settings: Settings) -> None:
    async with tcp_proxy(*_server(settings)) as port:
        threshold, prepared = await _pooled(_through(settings, port))
    assert threshold is None
    assert prepared == 0


async def test_a_role_with_no_privileges_prepares_straight_to_postgresql(
    settings: Settings,
) -> None:
    """What the check asks, any role may ask: a part's own role is no superuser (a check
    that needed one failed every connection of the pool once)."""
    role = f"plain_{uuid.uuid4().hex[:8]}"
    admin = libpq_url(settings.database_url.get_secret_value())
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        url = make_url(settings.database_url.get_secret_value()).set(username=role)
        plain = settings.model_copy(
            update={"database_url": SecretStr(url.render_as_string(hide_password=False))}
        )
        assert await _pooled(plain) == (PREPARE_THRESHOLD, 1)
    finally:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(f"DROP ROLE {role}")


async def test_a_pool_on_postgresqls_own_unix_socket_prepares(settings: Settings) -> None:
    folder = "/var/run/postgresql"
    port = _server(settings)[1]
    if not os.path.exists(os.path.join(folder, f".s.PGSQL.{port}")):
        pytest.skip(f"no PostgreSQL socket in {folder} on this machine")
    url = make_url(settings.database_url.get_secret_value()).set(
        host=None, port=None, query={"host": folder, "port": str(port)}
    )
    local = settings.model_copy(
        update={"database_url": SecretStr(url.render_as_string(hide_password=False))}
    )
    assert await _pooled(local) == (PREPARE_THRESHOLD, 1)


async def test_told_false_a_pool_prepares_nothing_even_straight(settings: Settings) -> None:
    threshold, prepared = await _pooled(settings.model_copy(update={"database_prepare": False}))
    assert (threshold, prepared) == (None, 0)


async def test_told_true_a_pool_prepares_even_through_a_proxy(settings: Settings) -> None:
    async with tcp_proxy(*_server(settings)) as port:
        threshold, prepared = await _pooled(_through(settings, port, database_prepare=True))
    assert threshold == PREPARE_THRESHOLD
    assert prepared >= 1


async def test_the_relays_connections_choose_the_same_way(
    settings: Settings, topology: Topology
) -> None:
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    relays: list[OutboxRelay] = []
    try:
        async with tcp_proxy(*_server(settings)) as port:
            chosen = []
            for target in (settings, _through(settings, port)):
                url = libpq_url(target.database_url.get_secret_value())
                relay = OutboxRelay(
                    url,
                    publisher,
                    topology,
                    prepare="auto",
                )
                relays.append(relay)
                # The relay's own first step on a lane: its connection, opened and chosen for.
                await relay.publish_batch()
                conn = await relay._connection(0)
                chosen.append(conn.prepare_threshold)
            for relay in relays:
                await relay.close()
        assert chosen == [PREPARE_THRESHOLD, None]
    finally:
        await publisher.close()
