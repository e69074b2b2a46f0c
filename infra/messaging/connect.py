"""A short-lived broker connection for the commands, and the one line when there is none.

`connect` is `aio_pika.connect` that closes a connection which failed to open. aio-pika
leaves such a connection to the garbage collector, whose `close()` then runs outside
any event loop (in a test suite: against whichever test happens to be running).

`broker_failure` is the one line a command ends with when RabbitMQ cannot be used:
where it was looked for, and what to do.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import ProbableAuthenticationError
from pamqp.common import FieldTable
from yarl import URL

START_BROKER = "start it (rabbitmq-server -detached, or docker compose up -d rabbitmq)"


async def connect(url: str, *, name: str | None = None) -> AbstractConnection:
    """An open connection to `url` (a plain one: it does not reconnect).

    Bound how long it may take with `asyncio.timeout` around the call: a connection
    cancelled half-way is closed like one that failed.
    """
    properties: FieldTable | None = {"connection_name": name} if name else None
    connection = aio_pika.Connection(URL(url), client_properties=properties)
    try:
        await connection.connect()
    except BaseException:
        await connection.close()
        raise
    return connection


def broker_address(url: str) -> str:
    """`host:port` of a broker URL, with the scheme's default port."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.hostname or 'localhost'}:{port}"


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
