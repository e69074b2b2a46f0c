"""The drill's last step: RabbitMQ 3.10's stuck-nacking channel, for real.

A channel whose first publish to a quorum queue happens while the queue has no leader
may nack every later publish to that queue, though the queue has long had a leader
again. The probe tries to make that happen on the drill's cluster, two ways: a quorum
queue led by node 1 with nodes 2 and 3 killed (no majority: no leader), and with node
1 killed (a leader being elected); each time a first publish on two channels (a bare
one, and a `Publisher`'s), the nodes back; then it publishes on both, and reports
what the bare channel answered and how the `Publisher` got its messages through
(`infra.messaging.publisher`, `NackStreak`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from deploy.drill.cluster import Cluster, Node
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


async def _publisher_outcome(publisher: Publisher) -> str:
    try:
        async with asyncio.timeout(5):
            await publisher.publish(Outgoing("", QUEUE, b"{}", "probe", "probe", "Probe"))
    except TimeoutError:
        return "no answer in 5 s"
    except Exception as exc:
        return "nack" if nacked(exc) else type(exc).__name__
    return "ack"


async def _until_a_fresh_channel_is_acked(setup: AbstractConnection) -> float:
    began = time.monotonic()
    while True:  # a new channel each time: one that publishes too early may stick
        fresh = await setup.channel(publisher_confirms=True)
        answer = await _outcome(fresh, b"fresh")
        with contextlib.suppress(Exception):
            await fresh.close()
        if answer == "ack":
            return time.monotonic() - began
        if time.monotonic() - began > 120:
            raise TimeoutError(f"{QUEUE} took no publish on a fresh channel: {answer}")
        await asyncio.sleep(0.5)


async def _scenario(
    cluster: Cluster,
    leader: Node,
    kill: list[Node],
    via: Node,
    what: str,
    *,
    restart_first: bool = True,
) -> list[str]:
    """Declare the queue led by `leader`, kill `kill`, publish first on a bare channel
    and a Publisher connected to `via`; once the queue takes publishes again (after a
    restart of the killed nodes, or without it: a new leader elected meanwhile),
    publish again on both."""
    lines = [what]
    setup = await connect(leader.url, name="drill.nack-probe")
    async with setup:
        channel = await setup.channel()
        await channel.queue_delete(QUEUE)
        await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    client = await connect(via.url, name="drill.nack-probe.bare")
    publisher = await Publisher.connect(via.url, name="drill.nack-probe.publisher")
    try:
        bare = await client.channel(publisher_confirms=True)
        for node in kill:
            node.kill()
        lines.append(f"  killed {', '.join(n.name for n in kill)}; publishing through {via.name}")
        lines.append(f"  bare channel, first publish: {await _outcome(bare, b'first')}")
        lines.append(f"  publisher, first publish: {await _publisher_outcome(publisher)}")
        if restart_first:
            for node in kill:
                node.start()
            await cluster.wait_clustered(timeout=180)
        took = await _until_a_fresh_channel_is_acked(client)
        back = "nodes back" if restart_first else "a new leader"
        lines.append(f"  {back}; a fresh channel's publish acked {took:.0f}s on")
        answers = [await _outcome(bare, f"bare {i}".encode()) for i in range(ATTEMPTS)]
        lines.append(f"  bare channel, {ATTEMPTS} publishes after: {', '.join(answers)}")
        results = [await _publisher_outcome(publisher) for _ in range(ATTEMPTS)]
        lines.append(
            f"  publisher, {ATTEMPTS} publishes after: {', '.join(results)}"
            f" (channels replaced: {publisher.channels_renewed})"
        )
        cleanup = await client.channel()
        await cleanup.queue_delete(QUEUE)
        if not restart_first:
            for node in kill:
                node.start()
            await cluster.wait_clustered(timeout=180)
    finally:
        await publisher.close()
        await client.close()
    return lines


async def probe(cluster: Cluster) -> list[str]:
    """Run both scenarios; the report's lines."""
    first, second, third = cluster.nodes
    return [
        *await _scenario(
            cluster, first, [second, third], first, "no majority (two of three nodes down):"
        ),
        *await _scenario(
            cluster,
            first,
            [first],
            second,
            "the leader's node down, publishing on while it stays down:",
            restart_first=False,
        ),
    ]


async def main() -> None:
    """`python -m deploy.drill.nack_probe WORKDIR`: the probe alone, on a cluster of its own."""
    workdir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="checkout-probe-")
    cluster = Cluster(Path(workdir) / "cluster")
    try:
        await cluster.start()
        print("\n".join(await probe(cluster)), flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
