"""Closing a channel the operations opened, whatever state the connection is in."""

from __future__ import annotations

import contextlib

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError


async def close_quietly(channel: AbstractChannel) -> None:
    """Close `channel` unless the broker already did; a close that fails means the
    connection is gone, which closes the channel just as well."""
    with contextlib.suppress(AMQPError, OSError):
        if not channel.is_closed:
            await channel.close()
