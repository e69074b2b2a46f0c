"""What the operations commands (`checkout dlq`, `events`, `trace`, `stuck`) share.

Who runs them (`current_actor`), the `--json` option, the broker connection (one
line and exit 1 when it cannot be had; or, for a command that can do without it,
`tolerant_broker`), the database behind the audit log, running the command's one
async function with its errors turned into one line (`run`), and times as shown.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any, TypeVar

import sqlalchemy.exc
import typer
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError

from infra.cli.output import fail, quiet_loggers
from infra.db.session import UnitOfWork, create_engine
from infra.messaging.connect import broker_address, broker_failure, connect
from infra.settings import Settings
from operations.dlq.errors import AuditUnavailable
from operations.timefmt import when

__all__ = [
    "CONNECT_TIMEOUT",
    "TOLERANT_TIMEOUT",
    "Failure",
    "JsonOpt",
    "audit_log",
    "audit_problem",
    "broker",
    "current_actor",
    "database_or_exit",
    "run",
    "tolerant_broker",
    "undeclared",
    "when",
]

T = TypeVar("T")

ACTOR_ENV = "CHECKOUT_ACTOR"
CONNECT_TIMEOUT = 10.0
TOLERANT_TIMEOUT = 5.0  # a broker the command can do without is waited for less

JsonOpt = Annotated[
    bool, typer.Option("--json", help="One JSON document on stdout (also the default on a pipe).")
]


class Failure(Exception):
    """Something the command needs is unavailable; the message says what to do."""


def current_actor() -> str:
    """Who runs the command: `CHECKOUT_ACTOR` if set, else the operating-system user."""
    explicit = os.environ.get(ACTOR_ENV, "").strip()
    if explicit:
        return explicit[:128]
    try:
        return getpass.getuser()[:128]
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid {os.getuid()}"


@asynccontextmanager
async def broker(settings: Settings, client_name: str) -> AsyncIterator[AbstractConnection]:
    """A broker connection named `{namespace}.{client_name}`; `Failure` when there is none."""
    url = settings.rabbit_url.get_secret_value()
    try:
        # aio-pika logs the failure; our one line says it better.
        with quiet_loggers("aio_pika", "aiormq"):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                connection = await connect(url, name=f"{settings.namespace}.{client_name}")
    except (AMQPError, OSError) as exc:  # AMQPConnectionError and TimeoutError are OSErrors
        raise Failure(broker_failure(url, exc, refused="the connection")) from None
    try:
        yield connection
    finally:
        with quiet_loggers("aio_pika", "aiormq"):
            await connection.close()


@asynccontextmanager
async def tolerant_broker(
    settings: Settings, wanted: bool, client_name: str
) -> AsyncIterator[tuple[AbstractConnection | None, str | None]]:
    """A broker connection, or (None, why not): the command goes on without the queues."""
    connection: AbstractConnection | None = None
    error: str | None = None
    if wanted:
        url = settings.rabbit_url.get_secret_value()
        where = broker_address(url)
        try:
            with quiet_loggers("aio_pika", "aiormq"):
                async with asyncio.timeout(TOLERANT_TIMEOUT):
                    connection = await connect(url, name=f"{settings.namespace}.{client_name}")
        except (AMQPError, OSError) as exc:  # timeouts and refused connections are OSErrors
            error = f"RabbitMQ at {where} is not answering ({type(exc).__name__})"
    try:
        yield connection, error
    finally:
        if connection is not None:
            await connection.close()


@asynccontextmanager
async def audit_log(settings: Settings) -> AsyncIterator[UnitOfWork]:
    """The database (one connection) behind the audit log, disposed of at the end."""
    engine = create_engine(settings, pool_size=1)
    try:
        yield UnitOfWork(engine)
    finally:
        await engine.dispose()


def run(
    settings: Settings,
    main: Coroutine[Any, Any, T],
    on_error: Callable[[Exception], None] | None = None,
) -> T:
    """Run `main`; what goes wrong ends the command with one line and exit 1.

    `on_error` is shown whatever else `main` raised: it ends the command (`fail`) for
    the errors the command knows; anything it lets return goes on as it was.
    """
    try:
        return asyncio.run(main)
    except Failure as exc:
        fail(str(exc))
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
        raise


def undeclared(settings: Settings, exc: Exception, remedy: str) -> str:
    """The line for a queue the broker does not have: the namespace's topology was never
    declared; `remedy` says how to declare it."""
    return f"{exc}: the topology of namespace {settings.namespace!r} is not declared; {remedy}"


def audit_problem(settings: Settings, exc: AuditUnavailable) -> str:
    """Why the audit log cannot be used, and what to do about it."""
    from infra.cli.supervisor import database_error

    if exc.not_migrated:
        return "the database has no audit table yet: run `checkout migrate`"
    return str(database_error(settings, exc.cause))


@contextmanager
def database_or_exit(settings: Settings) -> Iterator[None]:
    """End the command with one line when the database is down or not migrated."""
    try:
        yield
    except sqlalchemy.exc.ProgrammingError as exc:
        if type(getattr(exc, "orig", None)).__name__ == "UndefinedTable":
            fail("the database is not migrated to this version: run `checkout migrate`")
        raise
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError) as exc:
        from infra.cli.supervisor import database_error

        fail(str(database_error(settings, exc)))
