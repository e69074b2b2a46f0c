"""A dead-lettered message as the operator sees it: ids, failure headers, body."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from infra.messaging import failures

DELIVERY_COUNT = "x-delivery-count"


@dataclass(frozen=True)
class DeadLetter:
    """What a dead-letter queue holds about one message, read without removing it."""

    message_id: str | None
    correlation_id: str | None
    message_type: str | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        return cls(
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            message_type=message.type,
            # The dead-letter queue is a quorum queue, which counts its own deliveries
            # (each `show` is one) in a header: about the queue, not the message.
            headers={k: v for k, v in (message.headers or {}).items() if k != DELIVERY_COUNT},
            body=message.body,
        )

    @property
    def attempts(self) -> int | None:
        value = self.headers.get(failures.ATTEMPTS)
        return value if isinstance(value, int) else None

    @property
    def order_id(self) -> str | None:
        """The order the message is about: its body's `order_id` when that is a UUID (every
        message of ours carries one), for an operator looking for an order's message."""
        body = self.parsed_body()
        value = body.get("order_id") if isinstance(body, dict) else None
        try:
            return str(uuid.UUID(value)) if isinstance(value, str) else None
        except ValueError:
            return None

    @property
    def error(self) -> str:
        """`ErrorType: message`, or the broker's reason when RabbitMQ dead-lettered it itself
        (the queue's delivery limit), which leaves no headers of ours."""
        kind = self.headers.get(failures.ERROR_TYPE)
        message = self.headers.get(failures.ERROR_MESSAGE)
        if kind or message:
            return f"{_text(kind or '?')}: {_text(message or '')}".rstrip(": ")
        reason = self.headers.get("x-first-death-reason")
        return f"dead-lettered by the broker: {_text(reason)}" if reason else ""

    def parsed_body(self) -> Any:
        """The body as JSON when it parses, else as text."""
        return parsed_body(self.body)

    def as_json(self) -> dict[str, Any]:
        """`dlq show --json`'s shape (CONTRACT.md section 1)."""
        return {
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "headers": jsonable(dict(self.headers)),
            "body": self.parsed_body(),
        }


def parsed_body(body: bytes) -> Any:
    """A message body as JSON when it parses, else as text."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def jsonable(value: Any) -> Any:
    """AMQP header values (bytes, times, decimals, nested tables) as JSON values."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _text(value: object) -> str:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
