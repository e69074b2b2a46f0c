"""A throwaway RabbitMQ node of a test's own: its own name, ports, data and cookie.

For what must never be done to the machine's shared broker: restarting it. The node
reads none of the machine's RabbitMQ configuration (`RABBITMQ_CONF_ENV_FILE` and
`RABBITMQ_CONFIG_FILE` point into the test's directory, no plugins, so no management
port), keeps its data in that directory, and is stopped by the test that started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from infra.localports import free_port

SERVER_ENV = "CHECKOUT_TEST_RABBITMQ_SERVER"
CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
START_PATIENCE = 60.0


def find_server() -> Path | None:
    """The `rabbitmq-server` script that runs a node as the current user, if installed.

    Not the `/usr/sbin` wrapper: run as root it switches to the `rabbitmq` user and
    drops the environment that makes the node our own.
    """
    explicit = os.environ.get(SERVER_ENV)
    for candidate in ([explicit] if explicit else []) + list(CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass
class RabbitNode:
    """One node; `start()` and `stop()` may be called again to restart it on its data."""

    server: Path
    base: Path
    name: str = field(default_factory=lambda: f"checkout-test-{uuid.uuid4().hex[:8]}@localhost")
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        home = self.base / "home"
        for path in (home, self.base / "mnesia", self.base / "log"):
            path.mkdir(parents=True, exist_ok=True)
        (self.base / "env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),  # its own Erlang cookie
            "LANG": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        env = self._env()
        with (self.base / "server.out").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [str(self.server)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_PATIENCE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited: see {self.base / 'server.out'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    break
            except OSError:
                time.sleep(0.2)  # the interval between tries of the port, until the deadline
        else:
            raise RuntimeError(f"node {self.name} did not listen within {START_PATIENCE}s")
        # Listening is not booted: wait until the node says it has fully started (its
        # queues recovered), as an operator's script would.
        self._ctl("await_startup", "--timeout", str(int(START_PATIENCE)))

    def _ctl(self, *args: str) -> None:
        ctl = self.server.with_name("rabbitmqctl")
        done = subprocess.run(
            [str(ctl), "-n", self.name, *args],
            env=self._env(),
            capture_output=True,
            timeout=START_PATIENCE + 30,
            check=False,
        )
        if done.returncode != 0 and args[0] != "stop":
            output = (done.stderr or done.stdout).decode(errors="replace")
            raise RuntimeError(f"rabbitmqctl {args[0]} on {self.name}: {output}")

    def stop(self) -> None:
        """Stop the node gracefully (as an operator would), then make sure it is gone."""
        if self.process is None:
            return
        self._ctl("stop")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
