"""The system under fault, as separate processes: its own database, namespace, ports, logs.

Every part runs as `python -m infra.cli <part>` (or a launcher module that wraps it),
in its own process group, logging JSON to `<tmp>/<part>.log` (appended across
restarts). The saga's and the consumers' calls to the simulated services go through
one `FaultProxy` per service, and their broker connections through another, so the
test can add latency and resets between a part and what it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx
from aiormq.exceptions import AMQPError

from infra.auth.keys import Role, create_key
from infra.db.migrate import drop_database, migrate
from infra.db.session import create_engine
from infra.http import MAX_BACKOFF
from infra.localports import free_port
from infra.messaging.topology import Topology, declare_topology, delete_topology
from infra.settings import Settings, load_settings
from saga.state_machine import late_charge_window
from tests.faults.proxy import FaultProxy
from tests.support.polling import eventually

ROOT = Path(__file__).resolve().parents[2]

# What `python -m infra.cli` is given to run each part.
PART_ARGS: dict[str, list[str]] = {
    "mocks": ["mocks"],
    "api": ["api"],
    "relay": ["relay"],
    "saga": ["saga"],
    "invoice": ["consumer", "invoice"],
    "email": ["consumer", "email"],
    "production": ["consumer", "production"],
}
# The parts the chaos may kill (the API and the simulated services stay up: the
# simulations keep their records in memory, and the clients talk to the API).
WORKERS = ("relay", "saga", "invoice", "email", "production")
CONSUMERS = ("invoice", "email", "production")
SERVICES = ("payments", "emails", "production")
# The queues each part consumes (what "ready" waits for).
PART_QUEUES = {"saga": ("payment",), **{c: (c,) for c in CONSUMERS}}

# Parts whose broker connections (consuming and publishing) go through the broker proxy.
BROKER_PROXIED: tuple[str, ...] = WORKERS

# Short first delays keep the run short; the sum (about 35 s, at least 28 s after
# jitter) must outlast the longest stretch a service stays unusable, so that only
# injected poison ends in a dead-letter queue. That stretch is not one fault window:
# windows on one service can follow each other a second apart, the breaker stays
# open a pause past each, and on a loaded CI machine a 10 s budget was overrun
# (six payments dead-lettered as transient after 6 attempts).
RETRY_DELAYS = "0.3,0.6,1.2,2.5,5,10,15"
# Deadlines short enough to fire during the run (CONTRACT.md section 8): a checkout
# still PAYMENT_PENDING this long after its charge was requested is reconciled. The
# chaos's payment outages and slow windows outlast it (`chaos.Chaos`), and the HTTP
# timeout outlasts the simulated slow charge (10 s), so that a slow charge's answer
# arrives after its checkout was failed by the reconciliation: a late answer, refunded.
# A checkout failed so keeps a deadline (its looks for a late charge) for the
# late-charge window after its end, which the settling waits for (`SETTLE_SECONDS`).
#
# On by default; CHECKOUT_CHAOS_DEADLINES=0 turns it off: the default deadline, which
# never fires during the run, and a short HTTP timeout.
DEADLINES = os.environ.get("CHECKOUT_CHAOS_DEADLINES", "1") != "0"
PAYMENT_DEADLINE = 4.0 if DEADLINES else 120.0
HTTP_TIMEOUT = 12.0 if DEADLINES else 1.0
HTTP_ATTEMPTS = 3
LATE_CHARGE_WINDOW = late_charge_window(HTTP_TIMEOUT, HTTP_ATTEMPTS, MAX_BACKOFF)
SETTLE_SECONDS = 60.0 + LATE_CHARGE_WINDOW
"""How long the run may take to settle once the faults stop: a minute, and the
late-charge window of a checkout failed by its reconciliation as they stopped."""


def connection_part(name: str, namespace: str) -> str | None:
    """`faults_x.consumer-email.publisher` -> `email`; None if not this run's."""
    if not name.startswith(namespace + "."):
        return None
    component = name[len(namespace) + 1 :].split(".")[0]
    return component.removeprefix("consumer-")


@dataclass
class Part:
    """One process of the system; restartable, killable."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        with self.log.open("ab") as handle:
            note = f"### start {self.name} #{self.starts + 1} at {time.time():.3f}\n"
            handle.write(note.encode())
            handle.flush()
            self.process = subprocess.Popen(
                [sys.executable, *self.argv],
                env=self.env,
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL, no goodbye; wait for it to be gone."""
        if not self.alive:
            return
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)
        self.kills += 1
        with self.log.open("ab") as handle:
            handle.write(f"### SIGKILL {self.name} at {time.time():.3f}\n".encode())

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class FaultSystem:
    """All parts of one run, its proxies, and what is needed to clean it up."""

    settings: Settings  # this run's (direct broker URL, direct service URLs)
    parts: dict[str, Part]
    service_proxies: dict[str, FaultProxy]
    broker_proxy: FaultProxy
    workdir: Path
    api: str
    mocks: str
    topology: Topology
    auth: dict[str, str]  # headers with a clerk key, for the load's API calls
    restarts: list[tuple[float, str]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def proxies(self) -> dict[str, FaultProxy]:
        return {**self.service_proxies, "broker": self.broker_proxy}

    def part_logs(self) -> dict[str, Path]:
        return {name: part.log for name, part in self.parts.items()}

    def tails(self, names: Iterable[str] | None = None, lines: int = 30) -> str:
        chosen = list(names) if names is not None else list(self.parts)
        return "\n".join(
            f"----- {name} (last {lines} lines) -----\n{self.parts[name].tail(lines)}"
            for name in chosen
        )

    async def kill(self, name: str) -> None:
        await asyncio.to_thread(self.parts[name].kill)

    def restart(self, name: str) -> None:
        part = self.parts[name]
        if not part.alive:
            part.start()
            self.restarts.append((time.time(), name))

    def ensure_running(self) -> list[str]:
        """Start every part that is not running; return their names."""
        started = [name for name, part in self.parts.items() if not part.alive]
        for name in started:
            self.restart(name)
        return started

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """The API is ready, the simulations answer, and every consumed queue has a consumer
        (of the parts that were started)."""
        queues = [q for p in self.parts if p in PART_QUEUES for q in PART_QUEUES[p]]
        connection = await aio_pika.connect(self.settings.rabbit_url.get_secret_value())
        async with connection, httpx.AsyncClient(timeout=5) as client:

            async def ready() -> bool:
                for name, part in self.parts.items():
                    if not part.alive:
                        raise AssertionError(f"{name} exited early:\n{part.tail(60)}")
                urls = [f"{self.mocks}/health/live"]
                if "api" in self.parts:
                    urls.append(f"{self.api}/health/ready")
                try:
                    for url in urls:
                        if (await client.get(url)).status_code != 200:
                            return False
                except httpx.TransportError:
                    return False
                counts = await consumer_counts(connection, self.topology, queues)
                return all(c > 0 for c in counts)

            await eventually(ready, timeout=timeout, interval=0.3, what="every part to be ready")

    async def stop(self) -> None:
        for part in self.parts.values():
            part.signal(signal.SIGKILL)
        for part in self.parts.values():
            if part.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(part.process.wait, 10)
        for proxy in self.proxies.values():
            await proxy.close()


async def consumer_counts(
    connection: aio_pika.abc.AbstractConnection, topology: Topology, keys: Iterable[str]
) -> list[int]:
    channel = await connection.channel()
    try:
        counts = []
        for key in keys:
            declared = await channel.declare_queue(topology.queues[key].name, passive=True)
            counts.append(declared.declaration_result.consumer_count or 0)
        return counts
    finally:
        await channel.close()


def _swap_host(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def run_env(base: Settings, tag: str) -> dict[str, str]:
    """The environment of every part of run `tag`, before the per-part broker URL."""
    server = base.database_url.get_secret_value().rsplit("/", 1)[0]
    return {
        "CHECKOUT_DATABASE_URL": f"{server}/checkout_faults_{tag}",
        "CHECKOUT_RABBIT_URL": base.rabbit_url.get_secret_value(),
        "CHECKOUT_NAMESPACE": f"faults_{tag}",
        "CHECKOUT_API_HOST": "127.0.0.1",
        "CHECKOUT_API_PORT": str(free_port()),
        "CHECKOUT_MOCKS_HOST": "127.0.0.1",
        "CHECKOUT_MOCKS_PORT": str(free_port()),
        "CHECKOUT_RETRY_DELAYS": RETRY_DELAYS,
        "CHECKOUT_RETRY_JITTER": "0.2",
        "CHECKOUT_HTTP_TIMEOUT": str(HTTP_TIMEOUT),
        "CHECKOUT_PAYMENT_DEADLINE": str(PAYMENT_DEADLINE),
        "CHECKOUT_HTTP_ATTEMPTS": str(HTTP_ATTEMPTS),
        "CHECKOUT_BREAKER_THRESHOLD": "5",
        "CHECKOUT_BREAKER_PAUSE": "1",
        "CHECKOUT_RELAY_POLL_INTERVAL": "0.5",
        "CHECKOUT_PREFETCH": "20",
        "CHECKOUT_DB_POOL_SIZE": "4",
        "CHECKOUT_LOG_FORMAT": "json",
        "CHECKOUT_LOG_LEVEL": "info",
        "CHECKOUT_MOCK_FAILURE_RATE": "0",
        "CHECKOUT_MOCK_LATENCY_MS": "0",
    }


async def start_system(
    base: Settings,
    workdir: Path,
    *,
    launchers: dict[str, str] | None = None,
    only: Iterable[str] | None = None,
    tag: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> FaultSystem:
    """Create the database and topology, the proxies, and start every part (or `only`
    those; the simulated services always run).

    `launchers` maps a part to the module that runs it instead of `infra.cli` (e.g. a
    consumer with its inbox switched off); it gets the same arguments. `extra_env` is
    added to every part's environment last (the cluster drill's broker list, say).
    """
    wanted = {"mocks", *(only or PART_ARGS)}
    tag = tag or uuid.uuid4().hex[:10]
    env_common = run_env(base, tag)
    settings = load_settings(
        database_url=env_common["CHECKOUT_DATABASE_URL"],
        rabbit_url=env_common["CHECKOUT_RABBIT_URL"],
        namespace=env_common["CHECKOUT_NAMESPACE"],
        retry_delays=env_common["CHECKOUT_RETRY_DELAYS"],
        mocks_port=int(env_common["CHECKOUT_MOCKS_PORT"]),
        api_port=int(env_common["CHECKOUT_API_PORT"]),
    )
    await asyncio.to_thread(migrate, settings)
    engine = create_engine(settings, pool_size=1)
    try:
        key = await create_key(engine, "fault-run", Role.clerk)
    finally:
        await engine.dispose()
    topology = Topology.from_settings(settings)
    connection = await aio_pika.connect(settings.rabbit_url.get_secret_value())
    async with connection:
        await declare_topology(await connection.channel(), topology)

    mocks_port = int(env_common["CHECKOUT_MOCKS_PORT"])
    service_proxies = {
        name: await FaultProxy(name, "127.0.0.1", mocks_port).start() for name in SERVICES
    }
    amqp = urlsplit(settings.rabbit_url.get_secret_value())
    broker_proxy = FaultProxy("broker", amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await broker_proxy.start()

    env_common |= {
        "CHECKOUT_PAYMENT_URL": f"http://{service_proxies['payments'].address}",
        "CHECKOUT_EMAIL_URL": f"http://{service_proxies['emails'].address}",
        "CHECKOUT_PRODUCTION_URL": f"http://{service_proxies['production'].address}",
    }
    # Nothing of the test session's own settings may leak into the parts.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    direct_amqp = settings.rabbit_url.get_secret_value()
    proxied_amqp = _swap_host(direct_amqp, "127.0.0.1", broker_proxy.port)
    workdir.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Part] = {}
    for name, args in PART_ARGS.items():
        if name not in wanted:
            continue
        env = {**base_env, **env_common}
        if name in BROKER_PROXIED:
            env["CHECKOUT_RABBIT_URL"] = proxied_amqp
        env |= extra_env or {}
        module = (launchers or {}).get(name, "infra.cli")
        parts[name] = Part(name, ["-m", module, *args], env, workdir / f"{name}.log")
    system = FaultSystem(
        settings=settings,
        parts=parts,
        service_proxies=service_proxies,
        broker_proxy=broker_proxy,
        workdir=workdir,
        api=f"http://127.0.0.1:{env_common['CHECKOUT_API_PORT']}",
        mocks=f"http://127.0.0.1:{mocks_port}",
        topology=topology,
        auth={"Authorization": f"Bearer {key.token}"},
    )
    for part in parts.values():
        part.start()
    try:
        await system.wait_ready()
    except BaseException:
        await destroy_system(system)
        raise
    return system


async def destroy_system(system: FaultSystem) -> None:
    """Kill every part, close the proxies, delete the namespace's queues, drop the database."""
    await system.stop()
    with contextlib.suppress(AMQPError, OSError, asyncio.TimeoutError):
        connection = await aio_pika.connect(system.settings.rabbit_url.get_secret_value())
        async with connection:
            await delete_topology(await connection.channel(), system.topology)
    await asyncio.to_thread(drop_database, system.settings.database_url.get_secret_value())


# ---- the broker, from the operator's side -------------------------------------------

RABBITMQCTL = shutil.which("rabbitmqctl")
_CONNECTION_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')


async def _rabbitmqctl(*args: str) -> str:
    assert RABBITMQCTL is not None
    process = await asyncio.create_subprocess_exec(
        RABBITMQCTL, "-q", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {err.decode(errors='replace')}")
    return out.decode(errors="replace")


async def broker_connections(namespace: str) -> list[tuple[str, str]]:
    """(pid, connection_name) of every broker connection this run's parts named."""
    out = await _rabbitmqctl("list_connections", "pid", "client_properties")
    found = []
    for line in out.splitlines():
        match = _CONNECTION_NAME.search(line)
        if match and match.group(1).startswith(namespace + "."):
            found.append((line.split("\t", 1)[0].strip(), match.group(1)))
    return found


async def close_broker_connection(pid: str, reason: str) -> bool:
    try:
        await _rabbitmqctl("close_connection", pid, reason)
    except RuntimeError:
        return False  # already gone
    return True


async def queue_totals(namespace: str) -> dict[str, tuple[int, int]]:
    """(ready, unacked) of every queue of the namespace, as the broker counts them."""
    out = await _rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged")
    totals = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0].startswith(namespace + "."):
            with contextlib.suppress(ValueError):
                totals[fields[0]] = (int(fields[1]), int(fields[2]))
    return totals
