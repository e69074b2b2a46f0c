"""The commands' short-lived broker connection: one that fails to open is closed."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aio_pika
import pytest
from aio_pika.exceptions import AMQPConnectionError

from infra.messaging.connect import broker_failure, connect
from infra.settings import Settings

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[aio_pika.Connection]:
    """The connections whose close() was awaited."""
    closed: list[aio_pika.Connection] = []
    close = aio_pika.Connection.close

    async def spy(self: aio_pika.Connection, *args: Any, **kwargs: Any) -> None:
        closed.append(self)
        await close(self, *args, **kwargs)

    monkeypatch.setattr(aio_pika.Connection, "close", spy)
    return closed


async def test_a_connection_that_fails_to_open_is_closed(closes: list[Any]) -> None:
    """Left unclosed, aio-pika's connection closes itself when it is collected, outside
    any event loop: a coroutine never awaited, reported against whatever runs then."""
    url = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    with pytest.raises(AMQPConnectionError) as failed:
        await connect(url)
    assert len(closes) == 1
    assert closes[0].is_closed
    assert "is not answering" in broker_failure(url, failed.value, refused="it")


async def test_a_connection_cut_short_by_a_timeout_is_closed(
    settings: Settings, closes: list[Any]
) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await connect(settings.rabbit_url.get_secret_value())
    assert len(closes) == 1


async def test_an_open_connection_is_the_callers_to_close(
    settings: Settings, closes: list[Any]
) -> None:
    connection = await connect(settings.rabbit_url.get_secret_value(), name="test.connect")
    assert not connection.is_closed
    assert closes == []
    await connection.close()
