"""A copy of a received message to publish again: `copy_of`.

What moving a message means wherever it is done: a queue migrated to another type
(`infra.messaging.topology.migrate_topology`), a dead letter replayed
(`operations.dlq.replay`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


def copy_of(
    message: AbstractIncomingMessage,
    headers: Mapping[str, Any],
    delivery_mode: aio_pika.DeliveryMode,
) -> aio_pika.Message:
    """`message`'s body and properties, with `headers` and `delivery_mode` instead.

    Left out: `expiration` (a copy must not vanish before it is handled; a wait queue's
    copy waits out its queue's TTL again) and `user_id` (the broker requires it to name
    whoever publishes the copy).
    """
    return aio_pika.Message(
        message.body,
        headers=dict(headers),
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
