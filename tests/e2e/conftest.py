"""Fixtures for end-to-end tests: the system as a user runs it, `checkout up` as a process.

Each test module gets its own system, with its own database, namespace and free
ports, so it never meets the integration tests' parts or a `make run` on the same
machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import httpx
import pytest

from bench.system import listen_env
from infra.db.migrate import drop_database
from infra.localports import free_port
from infra.messaging.topology import Topology, delete_topology
from infra.settings import Settings, load_settings
from tests.support.polling import eventually
from tests.support.system import System


@pytest.fixture(scope="module")
def system_env(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    base = settings.database_url.get_secret_value().rsplit("/", 1)[0]
    env = {
        **os.environ,
        "CHECKOUT_DATABASE_URL": f"{base}/checkout_e2e_{tag}",
        # Behind a pooler, the relay's LISTEN goes straight to PostgreSQL: the same
        # server as CHECKOUT_DATABASE_LISTEN_URL, this system's database.
        **listen_env(f"{base}/checkout_e2e_{tag}"),
        "CHECKOUT_NAMESPACE": f"e2e_{tag}",
        "CHECKOUT_API_PORT": str(free_port()),
        "CHECKOUT_MOCKS_PORT": str(free_port()),
        "CHECKOUT_LOG_FORMAT": "json",
        # A replay right after an outage should not wait out a long breaker pause.
        "CHECKOUT_BREAKER_PAUSE": "1",
        # Not the developer's own .checkout/dev-api-key: this system has its own database.
        "CHECKOUT_DEV_KEY_FILE": str(tmp_path_factory.mktemp("e2e-key") / "dev-api-key"),
    }
    yield env
    drop_database(env["CHECKOUT_DATABASE_URL"])


@pytest.fixture(scope="module")
async def system(
    system_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    log = tmp_path_factory.mktemp("e2e") / "up.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up"],
        env=system_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{system_env['CHECKOUT_API_PORT']}"
    mocks = f"http://127.0.0.1:{system_env['CHECKOUT_MOCKS_PORT']}"
    run_settings = load_settings(
        database_url=system_env["CHECKOUT_DATABASE_URL"],
        namespace=system_env["CHECKOUT_NAMESPACE"],
    )
    system = System(process, system_env, api, mocks, log, run_settings)
    async with httpx.AsyncClient() as client:

        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"checkout up exited early:\n{system.output()}")
            try:
                api_ok = (await client.get(f"{api}/health/ready")).status_code == 200
                mocks_ok = (await client.get(f"{mocks}/health/live")).status_code == 200
            except httpx.TransportError:
                return False
            return api_ok and mocks_ok

        await eventually(ready, timeout=90, interval=0.25, what="the system to be ready")
    try:
        yield system
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        handle.close()
        connection = await aio_pika.connect(run_settings.rabbit_url.get_secret_value())
        async with connection:
            await delete_topology(await connection.channel(), Topology.from_settings(run_settings))
