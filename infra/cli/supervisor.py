"""`checkout up`: prepare the database and the broker, then run every part as a child process.

```
checkout up ── migrate ── declare topology ── Supervisor ─┬─ mocks        python -m infra.cli mocks
                                                          ├─ api          ... api
                                                          ├─ relay        ... relay
                                                          ├─ saga         ... saga
                                                          └─ invoice, email, production
                                                                          ... consumer NAME
```

The `Supervisor` knows nothing about the checkout system: it runs a list of `Part`s
(a name and an argv), relays their output line by line to a `Sink`, restarts a part that
exits with a growing delay, and on `stop()` shuts them all down within a grace period.
Tests drive it with small `python -c` children.

Why each child gets its own process group: Ctrl-C in a terminal signals the whole
foreground group. If the children were in it, each would get SIGINT from the terminal
and then SIGTERM from us; uvicorn and FastStream treat a second signal as "exit now",
which would cut in-flight work short. In their own group they get exactly one SIGTERM,
from us. The price is that a SIGKILLed supervisor cannot take them along; children run
through `python -m infra.cli` ask the kernel to send them SIGTERM when we die
(`infra.cli.__main__`), which covers that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

import httpx

from infra.auth.devkey import DevKey
from infra.health_ports import CONSUMERS, WORKERS, port_series, write_health_ports
from infra.messaging.connect import first_line
from infra.settings import Settings

GRACE_SECONDS = 20.0
# A child's lines are read with this limit; a longer line is dropped with a note.
LINE_LIMIT = 1 << 20
# After a child exits, how long its output may still trickle in (a grandchild can hold
# the pipe open) before we stop reading it.
DRAIN_SECONDS = 2.0
READY_TIMEOUT = 60.0
# Stop requests closer together than this are one request delivered twice.
REPEAT_WINDOW = 1.0


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Part:
    """One child process to keep running: a name for its log prefix, its argv, and what
    its environment has besides the supervisor's."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Backoff:
    """Delay before restarting a part that exited: 1, 2, 4 ... capped; reset by a long run."""

    first: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, failures_in_a_row: int) -> float:
        """The wait before the restart that follows the `failures_in_a_row`-th exit (1-based)."""
        return float(min(self.first * 2 ** (failures_in_a_row - 1), self.cap))


# --------------------------------------------------------------------------- output


class Sink(Protocol):
    """Where the supervisor writes its children's lines and its own notes."""

    def child_line(self, part: str, line: str) -> None: ...

    def note(self, event: str, *, level: str = "info", **fields: Any) -> None: ...

    def banner(self, title: str, rows: Sequence[tuple[str, str]], **fields: Any) -> None: ...


SUPERVISOR = "supervisor"


def _write_or_drop(stream: TextIO, text: str) -> None:
    """Write `text`, or drop it (and every line after it) once nobody reads the stream.

    `make run | tee run.log` and Ctrl-C: the terminal's SIGINT ends `tee` too, and the
    supervisor's next line would raise BrokenPipeError, in the middle of stopping the
    parts. Losing the output must never stop the stop: the stream's descriptor is
    pointed at /dev/null instead, as the Python documentation advises for SIGPIPE, so
    later lines, and the interpreter's last flush, go nowhere without failing.
    """
    try:
        stream.write(text)
        stream.flush()
    except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


# Part colours (ANSI); red is kept for errors, so it is not among them.
_PALETTE = ("36", "35", "34", "32", "33", "96", "95", "94", "92", "93")
_LEVEL_COLOURS = {"warning": "33", "error": "31"}


class ConsoleSink:
    """`name  | line`, the name padded to the longest and coloured per part on a terminal."""

    def __init__(self, names: Sequence[str], stream: TextIO | None = None, colour: bool = False):
        self._stream = stream
        self._colour = colour
        self._width = max((len(n) for n in (*names, SUPERVISOR)), default=0)
        self._codes = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}
        self._codes[SUPERVISOR] = "1"

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self._colour else text

    def _write(self, name: str, text: str) -> None:
        prefix = self._paint(self._codes.get(name, "0"), f"{name:<{self._width}} |")
        _write_or_drop(self._stream or sys.stdout, f"{prefix} {text}\n")

    def child_line(self, part: str, line: str) -> None:
        self._write(part, line)

    def note(self, event: str, *, level: str = "info", **fields: Any) -> None:
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"{event}  {pairs}" if pairs else event
        code = _LEVEL_COLOURS.get(level)
        self._write(SUPERVISOR, self._paint(code, text) if code else text)

    def banner(self, title: str, rows: Sequence[tuple[str, str]], **fields: Any) -> None:
        width = max(len(label) for label, _ in rows)
        rule = "─" * 60
        self._write(SUPERVISOR, self._paint("1", rule))
        self._write(SUPERVISOR, self._paint("1;32", title))
        for label, value in rows:
            self._write(SUPERVISOR, f"  {label:<{width}}  {self._paint('1', value)}")
        self._write(SUPERVISOR, self._paint("1", rule))


class JsonSink:
    """One JSON object per line: children's JSON lines unchanged, anything else wrapped."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream

    def _emit(self, line: str) -> None:
        _write_or_drop(self._stream or sys.stdout, line + "\n")

    @staticmethod
    def _record(component: str, event: str, level: str, **fields: Any) -> str:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        record = {"timestamp": now, "level": level, "component": component, "event": event}
        return json.dumps({**record, **fields}, default=str)

    def child_line(self, part: str, line: str) -> None:
        # The parts log JSON already, with their own "component"; a line that is not
        # JSON (a traceback, a print) is wrapped so the stream stays one object a line.
        stripped = line.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            self._emit(stripped)
        elif stripped:
            self._emit(self._record(part, line, "info", stream="output"))

    def note(self, event: str, *, level: str = "info", **fields: Any) -> None:
        self._emit(self._record(SUPERVISOR, event, level, **fields))

    def banner(self, title: str, rows: Sequence[tuple[str, str]], **fields: Any) -> None:
        self.note(title, **fields)


def make_sink(log_format: str, names: Sequence[str]) -> Sink:
    """The sink for `log_format`; colours only on a terminal and without NO_COLOR."""
    if log_format == "json":
        return JsonSink()
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return ConsoleSink(names, colour=colour)


# --------------------------------------------------------------------------- supervisor


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """Keep every part running until `stop()`; then SIGTERM, wait `grace`, SIGKILL the rest."""

    def __init__(
        self,
        parts: Sequence[Part],
        sink: Sink,
        *,
        grace: float = GRACE_SECONDS,
        backoff: Backoff | None = None,
        env: Mapping[str, str] | None = None,
    ):
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"part names must be unique: {names}")
        self.parts = list(parts)
        self.sink = sink
        self.grace = grace
        self.backoff = backoff or Backoff()
        self.env = dict(env) if env is not None else None
        self._stopping = asyncio.Event()
        self._kill_now = asyncio.Event()
        self._stop_requested_at: float | None = None
        self._running: dict[str, asyncio.subprocess.Process] = {}
        self.starts: dict[str, int] = dict.fromkeys(names, 0)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def pids(self) -> dict[str, int]:
        """The pid of every part running now."""
        return {name: proc.pid for name, proc in self._running.items()}

    def stop(self, reason: str = "stop requested") -> None:
        """Begin a graceful stop; a second call, a while later, kills what is left at once."""
        now = time.monotonic()
        if self._stop_requested_at is None:
            self._stop_requested_at = now
            self._stopping.set()  # before saying so: the stop must not depend on the output
            self.sink.note(
                f"{reason}: stopping every part",
                signal="SIGTERM",
                grace=f"{self.grace:g}s",
            )
        elif now - self._stop_requested_at < REPEAT_WINDOW:
            # One event delivered twice (`timeout`, `kill` of the process group plus
            # the process, a service manager), not a person insisting.
            return
        elif not self._kill_now.is_set():
            self._kill_now.set()
            self.sink.note(f"{reason} again: killing what is left", level="warning")

    async def run(self) -> None:
        """Start every part and keep them running; return once all have stopped after `stop()`."""
        await asyncio.gather(*(self._keep_running(part) for part in self.parts))

    async def _keep_running(self, part: Part) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            returncode = await self._run_once(part)
            if self._stopping.is_set():
                return
            ran_for = time.monotonic() - started
            # A part that ran for a while before failing starts again from the
            # shortest delay; one that keeps failing fast waits longer each time.
            failures = 1 if ran_for >= self.backoff.reset_after else failures + 1
            delay = self.backoff.delay(failures)
            self.sink.note(
                "part exited unexpectedly, restarting",
                level="warning",
                part=part.name,
                reason=_describe_exit(returncode) if returncode is not None else "did not start",
                ran_for=f"{ran_for:.1f}s",
                restart_in=f"{delay:g}s",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, part: Part) -> int | None:
        """Run the part until it exits or we stop; its return code, None if it did not start."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *part.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._environment(part),
                limit=LINE_LIMIT,
                process_group=0,
            )
        except OSError as exc:
            self.sink.note("part could not start", level="error", part=part.name, error=exc)
            return None
        self._running[part.name] = proc
        self.starts[part.name] += 1
        pump = asyncio.create_task(self._pump(part.name, proc))
        exited = asyncio.create_task(proc.wait())
        try:
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not exited.done():
                await self._terminate(part.name, proc, exited)
            returncode = await exited
        except BaseException:
            # Cancelled or broken: never leave a child behind.
            _signal_group(proc, signal.SIGKILL)
            raise
        finally:
            self._running.pop(part.name, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), DRAIN_SECONDS)
            pump.cancel()
        if self._stopping.is_set():
            self.sink.note("part stopped", part=part.name, reason=_describe_exit(returncode))
        return returncode

    def _environment(self, part: Part) -> Mapping[str, str] | None:
        if not part.env:
            return self.env
        return {**(self.env if self.env is not None else os.environ), **part.env}

    async def _terminate(
        self, name: str, proc: asyncio.subprocess.Process, exited: asyncio.Task[int]
    ) -> None:
        _signal_group(proc, signal.SIGTERM)
        kill_now = asyncio.create_task(self._kill_now.wait())
        await asyncio.wait(
            {exited, kill_now}, timeout=self.grace, return_when=asyncio.FIRST_COMPLETED
        )
        kill_now.cancel()
        if not exited.done():
            self.sink.note(
                "part did not stop in time, killing it",
                level="warning",
                part=name,
                grace=f"{self.grace:g}s",
            )
            _signal_group(proc, signal.SIGKILL)

    async def _pump(self, name: str, proc: asyncio.subprocess.Process) -> None:
        stream = proc.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                # asyncio has already discarded the over-long line.
                self.sink.child_line(name, f"[a line longer than {LINE_LIMIT} bytes was dropped]")
                continue
            if not raw:
                return
            self.sink.child_line(name, raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signal the child's process group (it leads its own), so its helpers go too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def supervise(supervisor: Supervisor) -> None:
    """Run `supervisor` with SIGINT and SIGTERM bound to `stop()`, until every part has stopped."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop, f"{sig.name} received")
    try:
        await supervisor.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# --------------------------------------------------------------------------- start-up checks


class StartupError(Exception):
    """Something the system needs is missing; the message is one line saying what to do."""


def _answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def database_error(settings: Settings, exc: BaseException) -> StartupError:
    """One line for a database that cannot be used: not running, or refusing us."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url.get_secret_value())
    host, port = url.host, url.port or 5432
    if host and not _answers(host, port):
        return StartupError(
            f"PostgreSQL at {host}:{port} is not answering: start it "
            "(pg_ctlcluster <version> main start, or docker compose up -d postgres) "
            "or set CHECKOUT_DATABASE_URL"
        )
    where = f"{host}:{port}" if host else "the local socket"
    return StartupError(
        f"PostgreSQL at {where} refused us ({first_line(exc)}): check CHECKOUT_DATABASE_URL"
    )


@dataclass(frozen=True)
class Migration:
    """What `prepare_database` did."""

    database: str
    created: bool
    revision: str


def prepare_database(settings: Settings) -> Migration:
    """Create the database if missing and migrate it to head; StartupError if unreachable."""
    import psycopg
    import sqlalchemy.exc
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url

    from infra.db.migrate import alembic_config, migrate

    url = settings.database_url.get_secret_value()
    try:
        created = migrate(settings)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        raise database_error(settings, exc) from None
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    return Migration(str(make_url(url).database), created, head or "base")


async def prepare_broker(settings: Settings, patience: float = 15.0) -> None:
    """Declare every exchange and queue; StartupError if the broker cannot be used."""
    import logging

    from aio_pika.exceptions import AMQPError

    from infra.messaging.connect import broker_failure
    from infra.messaging.topology import declare_from_settings

    # aio-pika logs a failed connection itself; our one line says it better.
    quiet = [logging.getLogger(n) for n in ("aio_pika", "aiormq")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        async with asyncio.timeout(patience):
            await declare_from_settings(settings)
    except (AMQPError, OSError) as exc:  # a timeout and a refused connection are OSErrors
        url = settings.rabbit_url.get_secret_value()
        hint = ""
        if "inequivalent arg" in str(exc):  # queues of an older deployment (classic ones)
            hint = ": stop the parts and run `checkout declare --migrate` to move them over"
        raise StartupError(broker_failure(url, exc, refused="the topology", hint=hint)) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


# --------------------------------------------------------------------------- the system


def system_parts(
    python: str | None = None, health_ports: Mapping[str, int] | None = None
) -> list[Part]:
    """Every part of the checkout system, each as `python -m infra.cli ...`; a worker in
    `health_ports` serves its health and metrics on that port."""
    cli = (python or sys.executable, "-m", "infra.cli")
    ports = health_ports or {}

    def env(name: str) -> dict[str, str]:
        return {"CHECKOUT_HEALTH_PORT": str(ports[name])} if name in ports else {}

    return [
        Part("mocks", (*cli, "mocks")),
        Part("api", (*cli, "api")),
        Part("relay", (*cli, "relay"), env("relay")),
        Part("saga", (*cli, "saga"), env("saga")),
        *(Part(name, (*cli, "consumer", name), env(name)) for name in CONSUMERS),
    ]


def health_ports(settings: Settings) -> dict[str, int]:
    """A health port for each worker of `checkout up`: from `CHECKOUT_HEALTH_PORT` on, one
    each, when it is set; else ports free now, so that two systems (or a system and a
    part started alone) on one machine never meet. Chosen before the parts start, so the
    banner can say where each is, and kept when a part restarts."""
    if settings.health_port:
        return port_series(settings.health_port)
    # Nor the API's or the mocks' port: free now, it is theirs once they start, and a
    # worker's health endpoint there once answered /health/ready in the API's place.
    taken = {settings.api_port, settings.mocks_port}
    chosen: list[int] = []
    with contextlib.ExitStack() as held:
        # Every socket stays open until every port is known: no number twice.
        while len(chosen) < len(WORKERS):
            sock = held.enter_context(socket.socket())
            sock.bind((settings.health_host, 0))
            port = int(sock.getsockname()[1])
            if port not in taken:
                chosen.append(port)
        return dict(zip(WORKERS, chosen, strict=True))


def child_environment(settings: Settings) -> dict[str, str]:
    """Ours, plus the log format we resolved (children's stderr is a pipe, not a terminal)."""
    env = {
        **os.environ,
        "CHECKOUT_LOG_FORMAT": settings.log_format,
        "PYTHONUNBUFFERED": "1",
        "CHECKOUT_SUPERVISOR_PID": str(os.getpid()),
    }
    if settings.log_format == "console" and sys.stderr.isatty():
        env["FORCE_COLOR"] = "1"  # their stderr is our pipe; the lines end on a terminal
    return env


def local_url(host: str, port: int) -> str:
    """A URL a browser on this machine can open, also when the part listens on every address."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def _all_ready(client: httpx.AsyncClient, urls: Sequence[str]) -> bool:
    results = await asyncio.gather(*(client.get(url) for url in urls), return_exceptions=True)
    return all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)


async def prepare_dev_key(settings: Settings) -> DevKey:
    """The development key (`infra.auth.devkey`), made on the first start."""
    from infra.auth.devkey import ensure_dev_key
    from infra.db.session import create_engine

    engine = create_engine(settings, pool_size=1)
    try:
        return await ensure_dev_key(engine, settings.dev_key_file)
    finally:
        await engine.dispose()


async def _announce_when_ready(
    settings: Settings, supervisor: Supervisor, dev_key: DevKey, ports: Mapping[str, int]
) -> None:
    """Print the banner once the API is ready and the mocks are live (or warn after a while)."""
    api = local_url(settings.api_host, settings.api_port)
    mocks = local_url(settings.mocks_host, settings.mocks_port)
    probes = (f"{api}/health/ready", f"{mocks}/health/live")
    deadline = time.monotonic() + READY_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not await _all_ready(client, probes):
            if supervisor.stopping:
                return
            if time.monotonic() > deadline:
                supervisor.sink.note(
                    "the system is not ready yet; see the api and mocks lines above",
                    level="warning",
                    waited=f"{READY_TIMEOUT:g}s",
                    probes=" ".join(probes),
                )
                return
            await asyncio.sleep(0.25)
    health = {name: local_url(settings.health_host, port) for name, port in ports.items()}
    supervisor.sink.banner(
        "checkout is up",
        [
            ("API", api),
            ("console", f"{api}/console  (sign in with the API key below)"),
            ("API docs", f"{api}/docs  {api}/redoc"),
            ("API key", f"{dev_key.token}  (operator, development; also in {dev_key.path})"),
            ("mocks", f"{mocks}/mock/payments  /mock/emails  /mock/production/orders"),
            ("health", f"{api}/health/ready  (and /metrics) for the API; for the others:"),
            *((f"  {name}", f"{url}/health/ready  {url}/metrics") for name, url in health.items()),
            ("try", ".venv/bin/checkout demo"),
            ("or", f'curl -H "Authorization: Bearer $(cat {dev_key.path})" {api}/orders'),
            ("stop", "Ctrl-C"),
        ],
        api=api,
        console=f"{api}/console",
        api_key_file=str(dev_key.path),
        docs=f"{api}/docs",
        mocks=mocks,
        health={"api": api, **health},
        hint=".venv/bin/checkout demo",
    )


async def _run_system(
    settings: Settings, supervisor: Supervisor, dev_key: DevKey, ports: Mapping[str, int]
) -> None:
    announce = asyncio.create_task(_announce_when_ready(settings, supervisor, dev_key, ports))
    try:
        await supervise(supervisor)
    finally:
        announce.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announce


def run_system(settings: Settings, grace: float = GRACE_SECONDS) -> None:
    """`checkout up`: migrate, declare the topology, then supervise every part until stopped."""
    ports = health_ports(settings)
    write_health_ports(settings, ports)
    parts = system_parts(health_ports=ports)
    sink = make_sink(settings.log_format, [p.name for p in parts])
    migration = prepare_database(settings)
    sink.note(
        "database ready",
        database=migration.database,
        created=migration.created,
        revision=migration.revision,
    )
    asyncio.run(prepare_broker(settings))
    sink.note("broker topology declared", namespace=settings.namespace)
    dev_key = asyncio.run(prepare_dev_key(settings))
    sink.note(
        "development API key created (operator)" if dev_key.created else "development API key",
        file=str(dev_key.path),
    )
    supervisor = Supervisor(parts, sink, grace=grace, env=child_environment(settings))
    sink.note("starting parts", parts=",".join(p.name for p in parts))
    asyncio.run(_run_system(settings, supervisor, dev_key, ports))
    sink.note("every part stopped")
