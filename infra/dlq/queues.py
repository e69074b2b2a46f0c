"""Which dead-letter queue an operator means."""

from __future__ import annotations

from infra.dlq.errors import UnknownQueue
from infra.messaging.topology import ConsumedQueue, Topology


def resolve(topology: Topology, name: str) -> ConsumedQueue:
    """The consumed queue named `name`, its `.dlq`, or its short key ("email")."""
    try:
        return topology.resolve_queue(name)
    except KeyError:
        raise UnknownQueue(name, [q.name for q in topology.queues.values()]) from None
