"""Fixtures shared by every test folder.

Each run of the suite gets its own database (`checkout_test_<hex>`) and its own
`CHECKOUT_NAMESPACE`, so runs never see each other's data; both are removed at the
end. The environment is set too, so processes started by e2e tests inherit them.

PostgreSQL and RabbitMQ are the ones running on the machine. If they do not answer
and Docker is available, testcontainers starts them; if neither, the run stops with
one line saying what to start. It never silently skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.migrate import drop_database, migrate
from infra.db.session import UnitOfWork, create_engine
from infra.messaging.topology import Topology, declare_topology, delete_topology
from infra.settings import Settings, load_settings
from tests.support.amqp import purge_all

RUN_ID = uuid.uuid4().hex[:10]
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
# Short retry delays keep failure tests fast; the schedule itself is a setting.
TEST_RETRY_DELAYS = "0.2,0.5,1"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+psycopg", ""))
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _address(url: str, default_port: int) -> str:
    parts = urlsplit(url.replace("+psycopg", ""))
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or default_port}"


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def _server_urls() -> tuple[str, str, list[object]]:
    """(database server URL without a database, AMQP URL, started containers)."""
    pg = os.environ.get("CHECKOUT_TEST_PG_SERVER", DEFAULT_PG)
    amqp = os.environ.get("CHECKOUT_TEST_RABBIT_URL", DEFAULT_AMQP)
    pg_ok, amqp_ok = _answers(pg, 5432), _answers(amqp, 5672)
    if pg_ok and amqp_ok:
        return pg, amqp, []
    if not _docker_available():
        missing = [
            f"{name} at {_address(url, port)}"
            for name, url, port, ok in (
                ("PostgreSQL", pg, 5432, pg_ok),
                ("RabbitMQ", amqp, 5672, amqp_ok),
            )
            if not ok
        ]
        pytest.exit(
            f"{' and '.join(missing)} not answering and no Docker for testcontainers: start them "
            "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start; "
            "rabbitmq-server -detached)",
            returncode=1,
        )
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    started: list[object] = []
    if not pg_ok:
        pg_container = PostgresContainer("postgres:15", driver="psycopg").start()
        started.append(pg_container)
        pg = pg_container.get_connection_url().rsplit("/", 1)[0]
    if not amqp_ok:
        mq = RabbitMqContainer("rabbitmq:3.12").start()
        started.append(mq)
        amqp = f"amqp://guest:guest@{mq.get_container_host_ip()}:{mq.get_exposed_port(5672)}/"
    return pg, amqp, started


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """This run's settings, its database migrated; database and broker names removed after."""
    pg, amqp, containers = _server_urls()
    env = {
        "CHECKOUT_DATABASE_URL": f"{pg}/checkout_test_{RUN_ID}",
        "CHECKOUT_RABBIT_URL": amqp,
        "CHECKOUT_NAMESPACE": f"test_{RUN_ID}",
        "CHECKOUT_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "CHECKOUT_LOG_FORMAT": "json",
        # Workers started in-process take any free port for their health endpoint.
        "CHECKOUT_HEALTH_PORT": "0",
        # `checkout up` in a test must not replace the developer's own development key.
        "CHECKOUT_DEV_KEY_FILE": os.path.join(
            tempfile.gettempdir(), f"checkout_test_{RUN_ID}", "dev-api-key"
        ),
    }
    os.environ.update(env)
    run_settings = load_settings()
    migrate(run_settings)
    yield run_settings
    drop_database(run_settings.database_url.get_secret_value())
    for container in containers:
        container.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def uow(engine: AsyncEngine) -> UnitOfWork:
    return UnitOfWork(engine)


TABLES = (
    "idempotency_keys, inbox, outbox, production_submissions, email_notifications, "
    "invoices, payments, checkout_steps, checkouts, orders, dlq_audit, checkout_events, "
    "deadlines, cancellation_keys, refunds, cancellation_steps, cancellations"
)


@pytest.fixture
async def clean_db(engine: AsyncEngine) -> AsyncEngine:
    """Empty every table before the test (for tests that count rows)."""
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    return engine


@pytest.fixture(scope="session")
async def rabbit(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(settings.rabbit_url.get_secret_value())
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
async def topology(
    settings: Settings, rabbit: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[Topology]:
    """This run's exchanges and queues, declared once and deleted at the end."""
    topo = Topology.from_settings(settings)
    channel = await rabbit.channel()
    await declare_topology(channel, topo)
    yield topo
    await delete_topology(channel, topo)
    await channel.close()


@pytest.fixture
async def purge_queues(
    topology: Topology, rabbit: aio_pika.abc.AbstractRobustConnection
) -> Topology:
    """Empty every queue of the run's namespace before the test."""
    channel = await rabbit.channel()
    await purge_all(channel, topology)
    await channel.close()
    return topology
