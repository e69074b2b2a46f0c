"""Publishing with publisher confirms and `mandatory`, with exact AMQP properties.

Used by the outbox relay, the payment step's replies and the retry/dead-letter path.
Each `publish` returns only when the broker has confirmed the message; a nack, or a
return because nothing is bound to the routing key, raises. Many publishes may be in
flight at once (`asyncio.gather`): their confirms are awaited together.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pamqp.common import FieldTable

from contracts import CONTENT_TYPE, SCHEMA_VERSION_HEADER, Message

log = structlog.get_logger()


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: body bytes plus the properties of CONTRACT.md section 4."""

    exchange: str  # "" is the default exchange (routing key = queue name)
    routing_key: str
    body: bytes
    # Kept as given: a dead-lettered copy must carry the original ids even when
    # they are malformed.
    message_id: uuid.UUID | str | None
    correlation_id: uuid.UUID | str | None
    message_type: str
    headers: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    expiration_ms: int | None = None

    @classmethod
    def of(
        cls,
        message: Message,
        *,
        exchange: str,
        message_id: uuid.UUID,
        correlation_id: uuid.UUID,
        headers: dict[str, Any] | None = None,
    ) -> Outgoing:
        return cls(
            exchange=exchange,
            routing_key=message.routing_key,
            body=message.model_dump_json().encode(),
            message_id=message_id,
            correlation_id=correlation_id,
            message_type=message.message_type,
            headers={SCHEMA_VERSION_HEADER: message.schema_version, **(headers or {})},
        )

    def to_amqp(self) -> aio_pika.Message:
        return aio_pika.Message(
            self.body,
            message_id=str(self.message_id) if self.message_id else None,
            correlation_id=str(self.correlation_id) if self.correlation_id else None,
            type=self.message_type,
            content_type=CONTENT_TYPE,
            timestamp=self.timestamp or datetime.now(UTC),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=self.headers,
            expiration=self.expiration_ms / 1000 if self.expiration_ms is not None else None,
        )


def _log_lost(_connection: object, exc: BaseException | None = None) -> None:
    if exc is not None:
        log.warning("broker connection lost; reconnecting", error=repr(exc))


def _log_restored(_connection: object) -> None:
    log.info("broker connection restored")


class Publisher:
    """A confirmed, mandatory publisher on its own robust connection."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel) -> None:
        self._connection = connection
        self._channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    async def connect(cls, url: str, *, name: str | None = None) -> Publisher:
        """Connect; `name` shows in `rabbitmqctl list_connections` (e.g. "checkout.relay")."""
        properties: FieldTable | None = {"connection_name": name} if name else None
        connection = await aio_pika.connect_robust(url, client_properties=properties)
        connection.close_callbacks.add(_log_lost)
        connection.reconnect_callbacks.add(_log_restored)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(connection, channel)

    async def _exchange(self, name: str) -> AbstractExchange:
        if name == "":
            return self._channel.default_exchange
        if name not in self._exchanges:
            # The topology is declared at start-up; here we only look it up.
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(self, outgoing: Outgoing) -> None:
        """Publish and wait for the broker's confirm; raise if nacked or unroutable."""
        exchange = await self._exchange(outgoing.exchange)
        await exchange.publish(outgoing.to_amqp(), outgoing.routing_key, mandatory=True)

    @property
    def channel(self) -> AbstractChannel:
        return self._channel

    @property
    def is_connected(self) -> bool:
        return not self._connection.is_closed

    async def close(self) -> None:
        await self._connection.close()
