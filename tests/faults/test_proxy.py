"""The TCP fault proxy itself: forwards, delays, resets and refuses on demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultProxy
from tests.support.polling import eventually

pytestmark = pytest.mark.faults


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await FaultProxy("echo", "127.0.0.1", port).start()
    yield proxy
    await proxy.close()
    server.close()
    await server.wait_closed()


async def _round_trip(proxy: FaultProxy, payload: bytes = b"ping") -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        started = time.monotonic()
        writer.write(payload)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        return answer, time.monotonic() - started
    finally:
        writer.close()


async def test_it_forwards_both_ways(proxy: FaultProxy) -> None:
    answer, _ = await _round_trip(proxy, b"hello through the proxy")
    assert answer == b"hello through the proxy"
    assert proxy.stats.connections == 1


async def test_latency_delays_each_direction_and_can_be_switched_off(proxy: FaultProxy) -> None:
    proxy.set_latency(0.15)
    _, slow = await _round_trip(proxy)
    assert slow >= 0.3  # there and back
    proxy.set_latency(0)
    _, fast = await _round_trip(proxy)
    assert fast < 0.15
    assert proxy.stats.latency_windows == 1


async def test_reset_breaks_the_connections_in_flight(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    assert proxy.reset() == 1
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        writer.write(b"y")
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()
    answer, _ = await _round_trip(proxy)  # new connections work again
    assert answer == b"ping"


async def test_refusing_resets_new_connections_for_a_while(proxy: FaultProxy) -> None:
    proxy.refuse_for(0.4)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await _round_trip(proxy)
    assert proxy.stats.refused == 1

    async def works() -> bool:
        try:
            return (await _round_trip(proxy))[0] == b"ping"
        except (ConnectionError, asyncio.IncompleteReadError):
            return False

    await eventually(works, timeout=5, what="the refusal to end by itself")
