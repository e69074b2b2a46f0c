"""Broker connections: short-lived ones, the parts' long-lived ones, and failover.

`connect` is `aio_pika.connect` that closes a connection which failed to open. aio-pika
leaves such a connection to the garbage collector, whose `close()` then runs outside
any event loop (in a test suite: against whichever test happens to be running).

`CHECKOUT_RABBIT_URL` may list several URLs, comma-separated (a cluster's nodes).
`connect` tries them in turn. `failover_connection` builds a part's long-lived
connection (`connect_robust` opens one; so does the API's broker link), a
`FailoverConnection`: aio-pika's robust connection, which reconnects by itself, but to
the next URL of the list when the current one fails, trying each once per attempt, so a
part whose node dies is back on another node within one reconnect rather than waiting
for the dead node's return. (FastStream builds its own: `infra.messaging.worker`.)

`ConnectionWatch` is what a part's long-lived connection reports: one warning when it
is lost, one info line when it is back, whatever happens in between, and the
`checkout_broker_connected` gauge (1 or 0) per connection name. aio-pika itself would
log every failed attempt (every few seconds, for as long as an outage lasts), aiormq a
traceback per lost connection: `OncePerOutage` lets the first line of each kind through
and holds back repeats until the connection is back.

`broker_failure` is the one line a command ends with when RabbitMQ cannot be used:
where it was looked for, and what to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aio_pika
import structlog
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection, AbstractRobustConnection, TimeoutType
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ProbableAuthenticationError
from pamqp.common import FieldTable
from yarl import URL

from infra import metrics
from infra.settings import split_urls

log = structlog.get_logger()

START_BROKER = "start it (rabbitmq-server -detached, or docker compose up -d rabbitmq)"


async def connect(url: str, *, name: str | None = None) -> AbstractConnection:
    """An open connection to `url`, or to the first of its comma-separated URLs that
    answers (a plain connection: it does not reconnect); raises the last URL's failure.

    Bound how long it may take with `asyncio.timeout` around the call: a connection
    cancelled half-way is closed like one that failed.
    """
    properties: FieldTable | None = {"connection_name": name} if name else None
    urls = split_urls(url)
    for index, one in enumerate(urls):
        connection = aio_pika.Connection(URL(one), client_properties=properties)
        try:
            await connection.connect()
        except CONNECTION_EXCEPTIONS:
            await connection.close()
            if index == len(urls) - 1:
                raise
            continue
        except BaseException:
            await connection.close()
            raise
        return connection
    raise ValueError("no broker URL given")


# The private attributes of aio-pika's RobustConnection that `FailoverConnection`
# overrides, as checked against aio-pika 10.2 (pyproject.toml pins that minor series).
# Should a release rename one, the override would be dead code and failover silently
# off: fail at import instead, naming the version found.
HOOKED_ATTRIBUTES = ("_RobustConnection__connect_transport", "_on_connection_close")
_missing = [
    name for name in HOOKED_ATTRIBUTES if not callable(getattr(RobustConnection, name, None))
]
if _missing:
    raise ImportError(
        f"aio-pika {aio_pika.__version__}: RobustConnection has no {', '.join(_missing)}, "
        "which infra.messaging.connect.FailoverConnection overrides to fail over across "
        "broker URLs (checked against aio-pika 10.2): install aio-pika 10.2.x or update the hook"
    )


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection over a list of URLs (`URLS`, set by `failover_class`).

    Each connection attempt tries the URLs in turn, from the one after the URL last
    lost, and fails only when every one has; aio-pika's own loop then waits its
    `reconnect_interval` and tries again. Channels, consumers and declared entities are
    restored by aio-pika as with one URL.

    The hook is aio-pika's private per-attempt coroutine (`__connect_transport`, which
    connects to `self.url`): aio-pika has no public one, its reconnect loop being
    private too. `HOOKED_ATTRIBUTES` are checked at import;
    `tests/integration/test_broker_failover.py` pins that the hook is called.
    """

    URLS: ClassVar[tuple[URL, ...]] = ()

    def __init__(self, url: URL, loop: Any = None, **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self._urls = self.URLS or (self.url,)
        # Where the next attempt starts: the URL connected last, or the one after it
        # once that connection is lost.
        self._start = 0
        self.watch: ConnectionWatch | None = None  # set by `failover_connection`

    async def connect(self, timeout: TimeoutType = None) -> None:  # noqa: ASYNC109 (aio-pika's)
        await super().connect(timeout)
        if self.watch is not None:
            # aio-pika calls its reconnect callbacks from the second connection on.
            self.watch.on_reconnect(self)

    async def _on_connection_close(self, closing: Any) -> None:
        # A connection made is lost (its node went away, most likely): the next attempt
        # starts at the next URL. Once per loss: aio-pika clears `connected` below.
        if self.connected.is_set():
            self._start = (self._start + 1) % len(self._urls)
        await super()._on_connection_close(closing)

    async def _RobustConnection__connect_transport(self) -> None:
        failure: BaseException | None = None
        start = self._start
        for step in range(len(self._urls)):
            # aio-pika read its parameters (reconnect_interval...) once, at __init__;
            # only the address changes here.
            index = (start + step) % len(self._urls)
            self.url = self._urls[index]
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
            except CONNECTION_EXCEPTIONS as exc:
                failure = exc
                continue
            self._start = index
            return
        assert failure is not None
        raise failure


def failover_class(urls: Sequence[str]) -> type[FailoverConnection]:
    """A `FailoverConnection` class over `urls` (aio-pika builds the connection itself)."""
    return type("FailoverConnection", (FailoverConnection,), {"URLS": tuple(URL(u) for u in urls)})


class OncePerOutage(logging.Filter):
    """Lets the first record of each message template through, until `reset()`."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, object]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        if key in self._seen:
            return False
        self._seen.add(key)
        # The line says what happened; the library's traceback of its own reader task
        # says nothing more to an operator, so it is dropped.
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def reset(self) -> None:
        self._seen.clear()


# One filter for the process: the client libraries' loggers are process-wide.
_LIBRARY_NOISE = OncePerOutage()
_NOISY_LOGGERS = (
    "aio_pika.robust_connection",
    "aio_pika.connection",
    "aio_pika.tools",  # "Callback ... RobustChannel._on_close error", once per channel
    "aiormq.connection",
)


def _hold_back_repeats() -> None:
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _LIBRARY_NOISE not in logger.filters:
            logger.addFilter(_LIBRARY_NOISE)


class ConnectionWatch:
    """One warning per outage, one info line per recovery, and the connected gauge."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lost = False
        self._gauge = metrics.BROKER_CONNECTED.labels(name)

    def attach(self, connection: AbstractRobustConnection, *, connected: bool = True) -> None:
        """Watch `connection`; `connected`: whether it is open yet (the gauge's start)."""
        _hold_back_repeats()
        connection.close_callbacks.add(self.on_close)
        connection.reconnect_callbacks.add(self.on_reconnect)
        self._gauge.set(1 if connected and not connection.is_closed else 0)

    def on_close(self, connection: object, exc: BaseException | None = None) -> None:
        self._gauge.set(0)
        if connection_lost(exc) and not self.lost:
            self.lost = True
            log.warning(
                "broker connection lost; reconnecting",
                connection=self.name,
                broker=str(connection),
                error=first_line(exc) if exc is not None else None,
            )

    def on_reconnect(self, connection: object) -> None:
        self._gauge.set(1)
        _LIBRARY_NOISE.reset()
        if self.lost:
            self.lost = False
            log.info("broker connection restored", connection=self.name, broker=str(connection))


def connection_lost(exc: BaseException | None) -> bool:
    """Whether a connection's close callback reports a loss, not our own close.

    aio-pika calls the callbacks with None or, when the connection is closed on purpose
    (shutdown), with CancelledError: neither is worth a warning.
    """
    return exc is not None and not isinstance(exc, asyncio.CancelledError)


RECONNECT_INTERVAL_S = 1.0
"""Pause between reconnection rounds (aio-pika's default is 5 s). A round tries every
URL, and the first attempt after a loss is made at once; this bounds how long a part
waits when a whole round failed (haproxy had not yet marked a dead node down, or every
node was restarting): a fraction of a stall measured in seconds, and one cheap
connection attempt per URL per second while the broker is away."""


def failover_connection(
    url: str,
    *,
    name: str,
    reconnect_interval: float = RECONNECT_INTERVAL_S,
    fail_fast: bool = True,
) -> FailoverConnection:
    """A long-lived connection across the URLs of `url`, not connected yet: call its
    `connect()`, which returns once it is open.

    Named `name` (it shows in `rabbitmqctl list_connections`) and watched by a
    `ConnectionWatch` of that name from the start: the gauge says 0 until the first
    connection is made. `fail_fast`: whether `connect()` fails when no URL answers
    (else aio-pika keeps trying every `reconnect_interval` s).
    """
    urls = split_urls(url)
    connection = failover_class(urls)(
        URL(urls[0]),
        fail_fast=fail_fast,
        reconnect_interval=reconnect_interval,
        client_properties={"connection_name": name},
    )
    connection.watch = ConnectionWatch(name)
    connection.watch.attach(connection, connected=False)
    return connection


async def connect_robust(url: str, *, name: str) -> AbstractRobustConnection:
    """A part's long-lived connection: reconnects by itself, across the URLs of `url`.

    Fails (like `aio_pika.connect_robust`) if no URL answers now. Watched by a
    `ConnectionWatch` named `name`, which also shows in `rabbitmqctl list_connections`.
    """
    connection = failover_connection(url, name=name)
    await connection.connect()
    return connection


def broker_address(url: str) -> str:
    """`host:port` of a broker URL (of each, for a comma-separated list)."""
    addresses = []
    for one in split_urls(url) or [url]:
        parts = urlsplit(one)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        addresses.append(f"{parts.hostname or 'localhost'}:{port}")
    return ", ".join(addresses)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def broker_failure(url: str, exc: BaseException, *, refused: str, hint: str = "") -> str:
    """Why RabbitMQ at `url` could not be used, in one line that says what to do.

    `refused` completes "RabbitMQ at host:port refused ..." for an AMQP error that is
    neither a refused login nor a broker that does not answer (a missing virtual host,
    say), e.g. "the topology"; `hint`, if given, follows it.
    """
    where = broker_address(url)
    if isinstance(exc, ProbableAuthenticationError):
        return (
            f"RabbitMQ at {where} refused the login ({first_line(exc)}): check CHECKOUT_RABBIT_URL"
        )
    if isinstance(exc, (TimeoutError, OSError)):  # AMQPConnectionError is an OSError
        return f"RabbitMQ at {where} is not answering: {START_BROKER} or set CHECKOUT_RABBIT_URL"
    return f"RabbitMQ at {where} refused {refused} ({first_line(exc)}){hint}"
