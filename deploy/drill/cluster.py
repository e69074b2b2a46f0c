"""A 3-node RabbitMQ cluster, haproxy and PgBouncer, started beside what the machine runs.

Everything comes from Debian's packages (rabbitmq-server, haproxy, pgbouncer) and lives
under one work directory: each node has its own name (`drillN@localhost`), AMQP and
distribution ports (free ones), Erlang cookie (`HOME` points at the node's directory),
data, logs, configuration and plugin list, and its own empty `rabbitmq-env.conf`
(Debian's names the machine's node). The machine's own node is never touched; the
nodes register with the machine's epmd as any second node would.

- haproxy: one TCP front for the three nodes, `balance first`: every connection goes
  to the first node that is up, so "the node the parts are connected to" is one node;
  a node that dies is marked down within a second and its client sessions are cut,
  and the parts reconnect through the same address to the next node (a connection
  that reaches the dead node before it is marked down is redispatched to another).
- PgBouncer: transaction pooling in front of the machine's PostgreSQL (trust auth),
  run as the `postgres` user (it refuses to run as root).

The configuration files are rendered by pure functions (`render_*`), which the test
suite checks without starting anything (`tests/unit/test_drill_config.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from infra.localports import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves: the /usr/sbin
# wrappers switch to the rabbitmq user, which would lose HOME and with it the cookie.
HOST = "localhost"


@dataclass
class Node:
    """One RabbitMQ node of the drill's cluster."""

    index: int
    amqp_port: int
    dist_port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"drill{self.index}@{HOST}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def env(self) -> dict[str, str]:
        home = str(self.home)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": home,  # the Erlang cookie is $HOME/.erlang.cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{home}/mnesia",
            "RABBITMQ_LOG_BASE": f"{home}/log",
            "RABBITMQ_CONFIG_FILE": f"{home}/rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{home}/enabled_plugins",
            "RABBITMQ_CONF_ENV_FILE": f"{home}/rabbitmq-env.conf",
            "RABBITMQ_PID_FILE": f"{home}/rabbitmq.pid",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.alive, f"{self.name} is running"
        with (self.home / "server.log").open("ab") as out:
            self.process = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self.env(),
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a kill takes beam and children
            )

    def kill(self) -> None:
        """SIGKILL the node's whole process group: a crash, no goodbye to the cluster."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.process = None

    async def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """`rabbitmqctl -n <node> ...` with this node's cookie; raises on failure."""
        proc = await asyncio.create_subprocess_exec(
            str(RABBIT_BIN / "rabbitmqctl"),
            "-n",
            self.name,
            *args,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {err.decode()}")
        return out.decode()


def render_node_config(nodes: list[str]) -> str:
    """rabbitmq.conf of every node: the cluster formed from a fixed list at first boot."""
    lines = [
        "# Rendered by deploy/drill/cluster.py for the cluster drill.",
        "cluster_formation.peer_discovery_backend = classic_config",
        *(f"cluster_formation.classic_config.nodes.{i} = {n}" for i, n in enumerate(nodes, 1)),
        # A node that comes back after a kill rejoins; a minority never pauses the drill's
        # own checks (the default, ignore, is what a 3-node quorum-queue cluster runs).
        "cluster_partition_handling = ignore",
        "log.file.level = info",
        "log.console = false",
    ]
    return "\n".join(lines) + "\n"


def render_haproxy(port: int, node_ports: list[int]) -> str:
    """haproxy.cfg: one TCP front, `balance first`, fast health checks, cut sessions of a
    node marked down."""
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{p} check inter 500ms fall 2 rise 2 "
        "on-marked-down shutdown-sessions"
        for i, p in enumerate(node_ports, 1)
    )
    return f"""# Rendered by deploy/drill/cluster.py for the cluster drill.
global
    maxconn 2000

defaults
    mode tcp
    # A connection refused by a node not yet marked down is tried on the next one.
    retries 2
    option redispatch 1
    timeout connect 2s
    timeout client 3h
    timeout server 3h

listen amqp
    bind 127.0.0.1:{port}
    balance first
{servers}
"""


def render_pgbouncer(port: int, workdir: Path, pg_host: str, pg_port: int) -> str:
    """pgbouncer.ini: transaction pooling for every database of the machine's PostgreSQL."""
    return f"""; Rendered by deploy/drill/cluster.py for the cluster drill.
[databases]
* = host={pg_host} port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
max_db_connections = 60
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""


@dataclass
class Cluster:
    """The drill's brokers and poolers; `start()`, then `stop()` (also on failure)."""

    workdir: Path
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    nodes: list[Node] = field(default_factory=list)
    haproxy_port: int = 0
    pgbouncer_port: int = 0
    _haproxy: subprocess.Popen[bytes] | None = None
    _pgbouncer: subprocess.Popen[bytes] | None = None

    @property
    def haproxy_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.haproxy_port}/"

    @property
    def node_urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def pgbouncer_url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pgbouncer_port}/{database}"

    def prepare(self) -> None:
        """Choose the ports and write every file; starts nothing."""
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        cookie = secrets.token_hex(16)
        self.nodes = [
            Node(i, free_port(), free_port(), self.workdir / f"node{i}") for i in (1, 2, 3)
        ]
        config = render_node_config([n.name for n in self.nodes])
        for node in self.nodes:
            node.home.mkdir()
            cookie_file = node.home / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
            (node.home / "rabbitmq.conf").write_text(config)
            (node.home / "enabled_plugins").write_text("[].\n")
            (node.home / "rabbitmq-env.conf").write_text("")
        self.haproxy_port, self.pgbouncer_port = free_port(), free_port()
        (self.workdir / "haproxy.cfg").write_text(
            render_haproxy(self.haproxy_port, [n.amqp_port for n in self.nodes])
        )
        pooler = self.workdir / "pgbouncer"
        pooler.mkdir()
        (pooler / "userlist.txt").write_text('"postgres" ""\n')
        (pooler / "pgbouncer.ini").write_text(
            render_pgbouncer(self.pgbouncer_port, pooler, self.pg_host, self.pg_port)
        )
        # PgBouncer refuses to run as root: it runs as `postgres`, and writes here. The
        # folders above must let that user through: the drill's own temporary folder is
        # private (0700, from mkdtemp), so it and this one get search permission only
        # (nothing in them can be listed).
        for folder in (self.workdir, self.workdir.parent):
            folder.chmod(folder.stat().st_mode | 0o111)
        with contextlib.suppress(LookupError):  # no such user: the start will say so
            for path in (pooler, *pooler.iterdir()):
                shutil.chown(path, "postgres")

    async def start(self) -> None:
        self.prepare()
        for node in self.nodes:
            node.start()
        await self.wait_clustered(timeout=180)
        with (self.workdir / "haproxy.log").open("ab") as log:
            self._haproxy = subprocess.Popen(
                ["haproxy", "-f", str(self.workdir / "haproxy.cfg"), "-db"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        await _started(self.haproxy_port, "haproxy", self.workdir / "haproxy.log")
        await self.start_pooler()

    async def start_pooler(self) -> None:
        """PgBouncer, as `postgres` (it refuses root), once `prepare()` wrote its files."""
        ini = self.workdir / "pgbouncer" / "pgbouncer.ini"
        said = self.workdir / "pgbouncer-stderr.log"
        with said.open("ab") as stderr:
            self._pgbouncer = subprocess.Popen(
                ["pgbouncer", "-u", "postgres", str(ini)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        await _started(self.pgbouncer_port, "PgBouncer", said)

    async def running_nodes(self, via: Node | None = None) -> list[str]:
        for node in [via] if via else [n for n in self.nodes if n.alive]:
            try:
                status = json.loads(await node.ctl("cluster_status", "--formatter", "json"))
            except (RuntimeError, TimeoutError, ValueError):
                continue
            return list(status.get("running_nodes", []))
        return []

    async def wait_clustered(self, timeout: float) -> None:
        """Until every node that should run is up and in the cluster."""
        deadline = time.monotonic() + timeout
        want = {n.name for n in self.nodes if n.alive}
        while True:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    tail = (node.home / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{node.name} exited:\n{tail}")
            if set(await self.running_nodes()) >= want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not form in {timeout:.0f}s: want {want}")
            await asyncio.sleep(1)

    async def restart(self, node: Node) -> float:
        """Start a killed node again; seconds until it is back in the cluster."""
        began = time.monotonic()
        node.start()
        await self.wait_clustered(timeout=180)
        return time.monotonic() - began

    async def leaders(self, namespace: str) -> Counter[str]:
        """How many of the namespace's quorum queues each node leads."""
        via = next(n for n in self.nodes if n.alive)
        out = await via.ctl(
            "list_queues", "name", "type", "leader", "--formatter", "json", "--quiet"
        )
        counts: Counter[str] = Counter()
        for queue in json.loads(out or "[]"):
            if queue.get("type") == "quorum" and str(queue["name"]).startswith(namespace + "."):
                counts[str(queue.get("leader", "?"))] += 1
        return counts

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for proc in (self._haproxy, self._pgbouncer):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
        for node in self.nodes:
            node.kill()


async def _started(port: int, name: str, output: Path) -> None:
    """Until `name` listens on `port`; if it does not within 30 s, what it said."""
    try:
        await _wait_port(port, timeout=30)
    except TimeoutError as exc:
        said = _tail(output)
        raise RuntimeError(f"{name} did not start ({exc}); it said:\n{said}") from None


def _tail(output: Path) -> str:
    return output.read_text(errors="replace")[-2000:] if output.exists() else ""


async def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.2)
            continue
        writer.close()
        await writer.wait_closed()
        return
