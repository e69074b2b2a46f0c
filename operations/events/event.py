"""One event as the log holds it: its offset in the stream, its properties, its body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from operations.dlq.letters import jsonable, parsed_body

OFFSET_HEADER = "x-stream-offset"  # added by RabbitMQ to every message read from a stream


@dataclass(frozen=True)
class LoggedEvent:
    """A public event read from the log (headers without the broker's offset header)."""

    offset: int
    message_id: str | None
    correlation_id: str | None
    message_type: str | None
    routing_key: str | None
    timestamp: datetime | None
    content_type: str | None
    content_encoding: str | None
    delivery_mode: int | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> LoggedEvent:
        headers = dict(message.headers or {})
        offset = headers.pop(OFFSET_HEADER, None)
        if not isinstance(offset, int):
            raise ValueError(f"a message without {OFFSET_HEADER}: not read from a stream")
        timestamp = message.timestamp
        if timestamp is not None and timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        return cls(
            offset=offset,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            message_type=message.type,
            routing_key=message.routing_key,
            timestamp=timestamp,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=int(message.delivery_mode) if message.delivery_mode else None,
            headers=headers,
            body=message.body,
        )

    def parsed_body(self) -> Any:
        """The body as JSON when it parses, else as text."""
        return parsed_body(self.body)

    @property
    def order_id(self) -> str | None:
        """The `order_id` of the body (every public event has one), if it parses."""
        body = self.parsed_body()
        value = body.get("order_id") if isinstance(body, dict) else None
        return str(value) if value is not None else None

    def copy(self) -> aio_pika.Message:
        """The message a backfill publishes: the same body, properties and headers."""
        return aio_pika.Message(
            self.body,
            headers=dict(self.headers),
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            delivery_mode=self.delivery_mode or aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=self.correlation_id,
            message_id=self.message_id,
            timestamp=self.timestamp,
            type=self.message_type,
        )

    def as_json(self) -> dict[str, Any]:
        """`events list --json`'s shape: one object per event."""
        return {
            "offset": self.offset,
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "type": self.message_type,
            "routing_key": self.routing_key,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "headers": jsonable(dict(self.headers)),
            "body": self.parsed_body(),
        }
