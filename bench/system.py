"""The checkout system as the benchmark runs it: every part its own process, as in production.

Like `checkout up` (and the e2e tests' fixture), but each part is started here directly
(`python -m infra.cli PART`), so that the driver knows every part's pid for its CPU and
memory, and can start two copies of each worker part (`copies=2`), each with its own
`CHECKOUT_HEALTH_PORT`. The run gets its own database (`checkout_bench_<tag>`),
namespace (`bench_<tag>`) and free ports, so it never meets a `make run` or the test
suite on the same machine; `cleanup()` removes the database and the namespace's
exchanges and queues.

Children are asked to die with the driver (`CHECKOUT_SUPERVISOR_PID`, see
`infra.cli.__main__`), so a driver killed with SIGKILL leaves no part behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aio_pika
import httpx
from sqlalchemy.engine import make_url

from infra.auth.keys import Role, create_key
from infra.db.migrate import drop_database, libpq_url, migrate
from infra.db.session import create_engine
from infra.localports import free_port
from infra.messaging.topology import Topology, declare_topology, delete_topology
from infra.settings import Settings, load_settings

DEFAULT_PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
WORKERS = ("relay", "saga", "invoice", "email", "production")
STOP_GRACE = 10.0


def pg_server() -> str:
    """The PostgreSQL server of CHECKOUT_DATABASE_URL (without its database), or the default."""
    url = os.environ.get("CHECKOUT_DATABASE_URL")
    return url.rsplit("/", 1)[0] if url else DEFAULT_PG_SERVER


def listen_env(database_url: str) -> dict[str, str]:
    """CHECKOUT_DATABASE_LISTEN_URL's server (set when CHECKOUT_DATABASE_URL is a pooler)
    with this run's database: NOTIFY reaches only listeners of the same database."""
    listen = os.environ.get("CHECKOUT_DATABASE_LISTEN_URL")
    if not listen:
        return {}
    url = make_url(listen).set(database=make_url(database_url).database)
    return {"CHECKOUT_DATABASE_LISTEN_URL": url.render_as_string(hide_password=False)}


def amqp_url() -> str:
    return os.environ.get("CHECKOUT_RABBIT_URL", DEFAULT_AMQP)


@dataclass
class Part:
    name: str  # "relay", or "relay#2" for a second copy
    argv: list[str]
    health_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass
class BenchSystem:
    """One run's database, namespace, ports and processes."""

    copies: int = 1
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    extra_env: dict[str, str] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.database_url = f"{pg_server()}/checkout_bench_{self.tag}"
        self.namespace = f"bench_{self.tag}"
        self.api_port, self.mocks_port = free_port(), free_port()
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"checkout-bench-{self.tag}-"))
        self.env = {
            **os.environ,
            "CHECKOUT_DATABASE_URL": self.database_url,
            **listen_env(self.database_url),
            "CHECKOUT_RABBIT_URL": amqp_url(),
            "CHECKOUT_NAMESPACE": self.namespace,
            "CHECKOUT_API_PORT": str(self.api_port),
            "CHECKOUT_MOCKS_PORT": str(self.mocks_port),
            "CHECKOUT_LOG_FORMAT": "json",
            # Logging costs CPU; a benchmark measures the work, not its log lines.
            "CHECKOUT_LOG_LEVEL": "warning",
            # One key drives all the load: the per-key limit would measure itself.
            "CHECKOUT_API_RATE_LIMIT": "1000000/second",
            "PYTHONUNBUFFERED": "1",
            # Children die with us (infra.cli.__main__ asks the kernel for it).
            "CHECKOUT_SUPERVISOR_PID": str(os.getpid()),
            **self.extra_env,
        }
        # Unset: the services are the mocks of this run.
        for name in ("CHECKOUT_PAYMENT_URL", "CHECKOUT_EMAIL_URL", "CHECKOUT_PRODUCTION_URL"):
            self.env.pop(name, None)
        self.settings: Settings = load_settings(
            database_url=self.database_url,
            rabbit_url=amqp_url(),
            namespace=self.namespace,
            api_port=self.api_port,
            mocks_port=self.mocks_port,
        )
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.mocks = f"http://127.0.0.1:{self.mocks_port}"
        self.conninfo = libpq_url(self.database_url)
        self.auth: dict[str, str] = {}  # made with the database (prepare_database)

    # ------------------------------------------------------------------ preparing

    def prepare_database(self) -> None:
        migrate(self.settings)
        self.auth = asyncio.run(self._make_key())

    async def _make_key(self) -> dict[str, str]:
        """Headers with a clerk key for the load generator."""
        engine = create_engine(self.settings, pool_size=1)
        try:
            # Unique: --keep-search-db keeps the database, and its keys, between runs.
            made = await create_key(engine, f"bench-{uuid.uuid4().hex[:8]}", Role.clerk)
        finally:
            await engine.dispose()
        return {"Authorization": f"Bearer {made.token}"}

    async def prepare_broker(self) -> None:
        connection = await aio_pika.connect(amqp_url())
        async with connection:
            await declare_topology(
                await connection.channel(), Topology.from_settings(self.settings)
            )

    # ------------------------------------------------------------------ parts

    def part(self, name: str, *args: str) -> Part:
        """A part to start: `name` for the report, `args` after `python -m infra.cli`."""
        cli = [sys.executable, "-m", "infra.cli", *args]
        if name.split("#")[0] in WORKERS:
            port = free_port()
            env = {**self.env, "CHECKOUT_HEALTH_PORT": str(port)}
            health = f"http://127.0.0.1:{port}/health/ready"
        elif name == "api":
            env, health = self.env, f"{self.api}/health/ready"
        else:
            env, health = self.env, f"{self.mocks}/health/live"
        return Part(name, cli, health, env)

    def plan(self) -> list[Part]:
        """Every part to run, with `copies` of each worker part."""
        planned = [self.part("mocks", "mocks"), self.part("api", "api")]
        for copy in range(1, self.copies + 1):
            suffix = "" if copy == 1 else f"#{copy}"
            planned.append(self.part(f"relay{suffix}", "relay"))
            planned.append(self.part(f"saga{suffix}", "saga"))
            for consumer in ("invoice", "email", "production"):
                planned.append(self.part(f"{consumer}{suffix}", "consumer", consumer))
        return planned

    def start(self, parts: list[Part]) -> None:
        """Start `parts` (from the main thread: a child's death signal follows its thread)."""
        for part in parts:
            part.log = (self.log_dir / f"{part.name.replace('#', '-')}.log").open("wb")
            part.process = subprocess.Popen(  # noqa: S603 (our own interpreter and argv)
                part.argv,
                env=part.env,
                stdin=subprocess.DEVNULL,
                stdout=part.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.parts.append(part)

    async def wait_ready(self, parts: list[Part], patience: float = 90.0) -> None:
        deadline = time.monotonic() + patience
        waiting = list(parts)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while waiting:
                for part in list(waiting):
                    assert part.process is not None
                    if part.process.poll() is not None:
                        raise RuntimeError(
                            f"{part.name} exited ({part.process.returncode}) while starting:\n"
                            + self.tail(part)
                        )
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(part.health_url)).status_code == 200:
                            waiting.remove(part)
                if waiting and time.monotonic() > deadline:
                    names = ", ".join(p.name for p in waiting)
                    raise RuntimeError(f"not ready after {patience:g}s: {names}")
                if waiting:
                    await asyncio.sleep(0.2)

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.parts if p.process is not None}

    def exited(self) -> list[str]:
        """Parts that have exited on their own (a crash during the run)."""
        return [
            f"{p.name} ({p.process.returncode})"
            for p in self.parts
            if p.process is not None and p.process.poll() is not None
        ]

    def tail(self, part: Part, lines: int = 20) -> str:
        path = self.log_dir / f"{part.name.replace('#', '-')}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to every part's process group, SIGKILL to what is left after `grace`."""
        running = [p for p in self.parts if p.process is not None and p.process.poll() is None]
        for part in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(part.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for part in running:
            assert part.process is not None
            try:
                part.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(part.pid, signal.SIGKILL)
                part.process.wait()
        for part in self.parts:
            if part.log is not None:
                part.log.close()

    def forget_logs(self) -> None:
        """Remove the parts' log files (after a run that went well; kept otherwise)."""
        shutil.rmtree(self.log_dir, ignore_errors=True)

    async def cleanup(self) -> None:
        """Drop the run's database and delete its namespace's exchanges and queues."""
        with contextlib.suppress(Exception):
            drop_database(self.database_url)
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(amqp_url())
            async with connection:
                await delete_topology(
                    await connection.channel(), Topology.from_settings(self.settings)
                )
