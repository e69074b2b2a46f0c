"""The API's broker connection: readiness, and the operators' console.

The API never publishes: a checkout writes an outbox row and the relay publishes it.
But an API whose system cannot reach the broker is not ready to take checkouts that
would only pile up, so readiness reports the connection. The console
(`operations.console`) reads and repairs the dead-letter queues over it, each
operation on a channel of its own. It is made in the background
(`fail_fast=False`): the API starts, and reports not ready, while the broker is down,
and aio-pika's robust connection reconnects by itself after a loss.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aio_pika.abc import AbstractConnection

from infra.messaging.connect import failover_connection

log = structlog.get_logger(__name__)

RECONNECT_INTERVAL = 2.0
CONNECT_TIMEOUT = 5.0


class BrokerLink:
    """A robust connection that is connecting, connected, or reconnecting."""

    def __init__(self, url: str, *, name: str = "checkout-api") -> None:
        # One URL, or a cluster's nodes: failover across them. Watched: one warning per
        # outage, and checkout_broker_connected{connection=name}.
        self._connection = failover_connection(
            url, name=name, reconnect_interval=RECONNECT_INTERVAL, fail_fast=False
        )
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin connecting; returns at once."""
        self._connecting = asyncio.create_task(
            self._connection.connect(timeout=CONNECT_TIMEOUT), name="broker-connect"
        )

    @property
    def is_connected(self) -> bool:
        return self._connection.connected.is_set() and not self._connection.is_closed

    @property
    def connection(self) -> AbstractConnection | None:
        """The connection while it is up, else None."""
        return self._connection if self.is_connected else None

    async def close(self) -> None:
        await self._connection.close()
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connecting
