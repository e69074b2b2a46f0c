"""Which queues may receive a backfill: `checkout events backfill` and the console ask here."""

from __future__ import annotations

from infra.messaging.topology import Topology


def not_for_events(topology: Topology, name: str) -> str | None:
    """Why `name` cannot receive public events, if it is the log or one of the system's
    other queues.

    A queue of ours that is not bound to `{ns}.orders` (the payment step's, a wait or
    dead-letter queue) would only dead-letter them or re-run them at the wrong place.
    The invoice, email and production queues may receive a backfill: their consumers
    de-duplicate like anyone's.
    """
    if name == topology.event_log:
        return f"{name} is the event log itself: name the queue to copy into"
    for queue in topology.queues.values():
        others = {queue.dlq, *(queue.wait_queue(n) for n in range(1, queue.max_attempts))}
        if queue.exchange != topology.orders_exchange:
            others.add(queue.name)
        if name in others:
            return (
                f"{name} is one of the checkout system's own queues that take no public "
                "events: a backfill copies into a subscriber's queue"
            )
    return None
