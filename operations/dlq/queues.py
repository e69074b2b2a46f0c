"""Which dead-letter queue an operator means."""

from __future__ import annotations

from infra.messaging.topology import ConsumedQueue, Topology
from operations.dlq.errors import UnknownQueue


def resolve(topology: Topology, name: str) -> ConsumedQueue:
    """The consumed queue named `name`, its `.dlq`, or its short key ("email")."""
    try:
        return topology.resolve_queue(name)
    except KeyError:
        raise UnknownQueue(name, [q.name for q in topology.queues.values()]) from None
