"""The drill's last step: RabbitMQ 3.10's stuck-nacking channel, for real.

A channel whose first publish to a quorum queue happens while the queue has no leader
may nack every later publish to that queue, though the queue has long had a leader
again. The probe makes that happen on the drill's cluster: a quorum queue led by node
1, nodes 2 and 3 killed (no majority: no leader), a first publish on two channels (a
bare one, and a `Publisher`'s), the two nodes back; then it publishes on both, and
reports what the bare channel answered and how the `Publisher` got its messages
through (`infra.messaging.publisher`, `NackStreak`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika
from aio_pika.abc import AbstractChannel

from deploy.drill.cluster import Cluster
from infra.messaging.connect import connect
from infra.messaging.publisher import Outgoing, Publisher, nacked

QUEUE = "drill.nack-probe"
ATTEMPTS = 8


async def _outcome(channel: AbstractChannel, body: bytes) -> str:
    """ack, nack, or what else a publish on `channel` to the probe queue answered."""
    try:
        async with asyncio.timeout(5):
            await channel.default_exchange.publish(aio_pika.Message(body), QUEUE)
    except TimeoutError:
        return "no answer in 5 s"
    except Exception as exc:
        return "nack" if nacked(exc) else type(exc).__name__
    return "ack"


async def probe(cluster: Cluster) -> list[str]:
    """Run the probe; the report's lines."""
    first, second, third = cluster.nodes
    lines = []
    setup = await connect(first.url, name="drill.nack-probe")
    publisher = await Publisher.connect(first.url, name="drill.nack-probe.publisher")
    try:
        channel = await setup.channel()
        await channel.queue_delete(QUEUE)
        await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        bare = await setup.channel(publisher_confirms=True)

        second.kill()
        third.kill()
        lines.append(f"{second.name} and {third.name} killed: {QUEUE} has no leader")
        lines.append(f"bare channel, first publish: {await _outcome(bare, b'first')}")
        message = Outgoing("", QUEUE, b"{}", "probe", "probe", "Probe")
        try:
            async with asyncio.timeout(5):
                await publisher.publish(message)
            lines.append("publisher, first publish: ack")
        except Exception as exc:
            lines.append(f"publisher, first publish: {'nack' if nacked(exc) else repr(exc)}")

        back = time.monotonic()
        second.start()
        third.start()
        await cluster.wait_clustered(timeout=180)
        deadline = time.monotonic() + 120
        while True:  # a new channel each time: one that publishes too early may stick
            fresh = await setup.channel(publisher_confirms=True)
            answer = await _outcome(fresh, b"fresh")
            with contextlib.suppress(Exception):
                await fresh.close()
            if answer == "ack":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{QUEUE} took no publish on a fresh channel: {answer}")
            await asyncio.sleep(0.5)
        lines.append(
            f"nodes back; a fresh channel's publish acked {time.monotonic() - back:.0f}s on"
        )

        answers = [await _outcome(bare, f"bare {i}".encode()) for i in range(ATTEMPTS)]
        lines.append(f"bare channel, {ATTEMPTS} publishes after: {', '.join(answers)}")
        results = []
        for _ in range(ATTEMPTS):
            try:
                async with asyncio.timeout(5):
                    await publisher.publish(message)
                results.append("ack")
            except Exception as exc:
                results.append("nack" if nacked(exc) else type(exc).__name__)
        lines.append(
            f"publisher, {ATTEMPTS} publishes after: {', '.join(results)}"
            f" (channels replaced: {publisher.channels_renewed})"
        )
        with contextlib.suppress(Exception):
            await channel.queue_delete(QUEUE)
    finally:
        await publisher.close()
        await setup.close()
    return lines
