"""Broker topology: every exchange and queue, named from the namespace, declared by code.

```
{ns}.orders    (topic)  public events   order.paid ──▶ {ns}.invoice, {ns}.email, {ns}.production
                                         order.cancelled ──▶ {ns}.invoice, {ns}.email
                                         order.#    ──▶ {ns}.orders.log (the event log, a stream)
{ns}.internal  (topic)  saga commands   payment.charge, payment.reconcile ──▶ {ns}.payment
                                         payment.refund    ──▶ {ns}.refund
                                         production.cancel ──▶ {ns}.production-cancel
```

Every consumed queue Q is a quorum queue with

- ``Q.wait.<ms>``: one wait queue per retry delay. A failed message is re-published
  there; its TTL expires and the queue dead-letters it back to Q through the default
  exchange. (No delayed-message plugin: it is archived.)
- ``Q.dlq``: where a message goes after its last retry, or at once on a permanent
  failure, with headers saying why (``infra.messaging.failures``).
- ``x-delivery-limit``: the backstop for a message that kills its consumer every time
  (it is never acked, so it is redelivered); after that many deliveries RabbitMQ
  dead-letters it to ``Q.dlq`` itself. RabbitMQ 3.10 has no default limit.

and the wait and dead-letter queues are quorum queues too, so that every queue a
message can be in survives the loss of one node of three (a classic queue lives on one
node: with it down, a retry copy came back unroutable and dead-lettering stopped). The
queues that dead-letter (Q and its wait queues) do it ``at-least-once`` (RabbitMQ 3.10,
which requires ``x-overflow: reject-publish``): the message stays in its queue until the
target queue has confirmed it, where the default, ``at-most-once``, drops it if the
target cannot take it at that moment (its leader being elected, say).

The topology is declared apart from the channels that publish and consume
(`declare_apart`, `checkout declare`): aio-pika re-declares on every reconnect what a
robust channel declared, and with a node down a re-declaration can fail, which kept
the channel from coming back at all. A queue's type cannot change in place: an
existing deployment's classic queues are moved over by `migrate_topology`
(`checkout declare --migrate`).

The event log (``infra.messaging.event_log``) keeps every public event for
``CHECKOUT_EVENT_LOG_DAYS``, and so also keeps an event nobody has subscribed to yet
routable: the relay publishes with ``mandatory`` and treats a return as an error. It
replaced the bounded ``{ns}.orders.journal`` queue, which ``declare_from_settings``
retires.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, ExchangeType
from aiormq.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed

from infra.messaging.connect import connect
from infra.messaging.copies import copy_of
from infra.messaging.event_log import declare_event_log, retire_journal
from infra.settings import Settings

log = structlog.get_logger()

DELIVERY_LIMIT = 20
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class ConsumedQueue:
    """A queue the system consumes, with its bindings, wait queues and dead-letter queue."""

    name: str
    exchange: str
    routing_keys: tuple[str, ...]
    retry_delays_ms: tuple[int, ...]

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    def wait_queue(self, attempt: int) -> str:
        """The wait queue a message enters after failing its `attempt`-th time (1-based)."""
        return f"{self.name}.wait.{self.retry_delays_ms[attempt - 1]}"

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays_ms) + 1


@dataclass(frozen=True)
class Topology:
    """All names of one namespace."""

    namespace: str
    retry_delays_ms: tuple[int, ...]
    event_log_days: int = 30
    queues: dict[str, ConsumedQueue] = field(init=False)

    def __post_init__(self) -> None:
        ns = self.namespace
        specs = {
            "payment": (self.internal_exchange, ("payment.charge", "payment.reconcile")),
            "refund": (self.internal_exchange, ("payment.refund",)),
            "production-cancel": (self.internal_exchange, ("production.cancel",)),
            "invoice": (self.orders_exchange, ("order.paid", "order.cancelled")),
            "email": (self.orders_exchange, ("order.paid", "order.cancelled")),
            "production": (self.orders_exchange, ("order.paid",)),
        }
        queues = {
            key: ConsumedQueue(f"{ns}.{key}", exchange, keys, self.retry_delays_ms)
            for key, (exchange, keys) in specs.items()
        }
        object.__setattr__(self, "queues", queues)

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        delays = tuple(round(d * 1000) for d in settings.retry_delays)
        return cls(settings.namespace, delays, settings.event_log_days)

    @property
    def orders_exchange(self) -> str:
        return f"{self.namespace}.orders"

    @property
    def internal_exchange(self) -> str:
        return f"{self.namespace}.internal"

    @property
    def event_log(self) -> str:
        """The stream every public event is kept in (`infra.messaging.event_log`)."""
        return f"{self.namespace}.orders.log"

    @property
    def journal_queue(self) -> str:
        """The bounded queue the event log replaced; retired by `declare_from_settings`."""
        return f"{self.namespace}.orders.journal"

    def exchange_name(self, logical: str) -> str:
        """Map an outbox row's logical exchange ("orders" | "internal") to its name."""
        return {"orders": self.orders_exchange, "internal": self.internal_exchange}[logical]

    def resolve_queue(self, name: str) -> ConsumedQueue:
        """Find a consumed queue by its name, its `.dlq`, or its short key ("email")."""
        base = name.removesuffix(DLQ_SUFFIX)
        for key, queue in self.queues.items():
            if base in (queue.name, key):
                return queue
        known = ", ".join(q.name for q in self.queues.values())
        raise KeyError(f"no consumed queue named {name!r}; known: {known}")


QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
# At-least-once dead-lettering, and the overflow behaviour it requires.
AT_LEAST_ONCE: dict[str, Any] = {
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def queue_arguments(topology: Topology) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every consumed, wait and dead-letter queue with its arguments, in declaration order."""
    for queue in topology.queues.values():
        yield queue.dlq, dict(QUORUM)
        for delay_ms in sorted(set(queue.retry_delays_ms)):
            yield (
                f"{queue.name}.wait.{delay_ms}",
                {
                    **QUORUM,
                    **AT_LEAST_ONCE,
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue.name,
                },
            )
        yield (
            queue.name,
            {
                **QUORUM,
                **AT_LEAST_ONCE,
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue.dlq,
            },
        )


def bindings(topology: Topology) -> dict[str, list[tuple[str, str]]]:
    """Each bound queue's (exchange, routing key) pairs."""
    bound: dict[str, list[tuple[str, str]]] = {}
    for queue in topology.queues.values():
        bound[queue.name] = [(queue.exchange, key) for key in queue.routing_keys]
    return bound


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding; idempotent.

    Run on a channel of its own (`declare_apart`), never on one that publishes or
    consumes. A queue declared before with other arguments (a classic queue of an older
    deployment) fails with PRECONDITION_FAILED: `migrate_topology` moves it over.
    """
    exchanges = await _declare_exchanges(channel, topology)
    await declare_event_log(
        channel, exchanges[topology.orders_exchange], topology.event_log, topology.event_log_days
    )
    bound = bindings(topology)
    for name, arguments in queue_arguments(topology):
        await _declare_queue(channel, name, arguments, bound.get(name, []), exchanges)


async def _declare_exchanges(
    channel: AbstractChannel, topology: Topology
) -> dict[str, AbstractExchange]:
    """Both topic exchanges, by name."""
    return {
        name: await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True)
        for name in (topology.orders_exchange, topology.internal_exchange)
    }


async def _declare_queue(
    channel: AbstractChannel,
    name: str,
    arguments: dict[str, Any],
    bound: list[tuple[str, str]],
    exchanges: dict[str, AbstractExchange],
) -> None:
    """Declare queue `name` and bind it: `bound` is its (exchange, routing key) pairs."""
    declared = await channel.declare_queue(name, durable=True, arguments=arguments)
    for exchange, key in bound:
        await declared.bind(exchanges[exchange], routing_key=key)


async def declare_apart(url: str, topology: Topology) -> None:
    """Declare the topology on a short-lived connection of its own, then close it.

    What every part does at start, before it opens the connections it publishes and
    consumes on; `url` may list several brokers (`infra.messaging.connect.connect`).
    """
    connection = await connect(url, name=f"{topology.namespace}.declare")
    async with connection:
        await declare_topology(await connection.channel(), topology)


async def delete_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Remove a namespace's exchanges and queues (test clean-up)."""
    for name in [topology.event_log, *(name for name, _ in queue_arguments(topology))]:
        await channel.queue_delete(name)
    for exchange in (topology.orders_exchange, topology.internal_exchange):
        await channel.exchange_delete(exchange)


async def declare_from_settings(settings: Settings) -> Topology:
    """Connect, declare, disconnect: what `checkout up` does before starting the parts."""
    topology = Topology.from_settings(settings)
    connection = await connect(
        settings.rabbit_url.get_secret_value(), name=f"{topology.namespace}.declare"
    )
    async with connection:
        await declare_topology(await connection.channel(), topology)
        await retire_journal(connection, topology.journal_queue, topology.orders_exchange)
    return topology


async def dlq_depths(connection: AbstractConnection, topology: Topology) -> dict[str, int]:
    """Messages ready in each consumed queue's dead-letter queue, by the consumed queue's
    name (the relay's `checkout_dead_letter_messages` gauge).

    Looked up on a channel opened for it and closed after: on a robust connection, a
    passive declaration on a lasting channel would be repeated on every reconnect.
    """
    channel = await connection.channel()
    try:
        depths = {}
        for queue in topology.queues.values():
            declared = await channel.declare_queue(queue.dlq, passive=True)
            depths[queue.name] = declared.declaration_result.message_count or 0
        return depths
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


MIGRATING_SUFFIX = ".migrating"


async def _matches(connection: AbstractConnection, name: str, arguments: dict[str, Any]) -> bool:
    """Whether queue `name` is missing or already declared with `arguments`."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
    except ChannelPreconditionFailed:
        return False  # the broker closed the channel
    await channel.close()
    return True


async def _exists(connection: AbstractConnection, name: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except ChannelNotFoundEntity:
        return False  # the broker closed the channel
    await channel.close()
    return True


async def _move(connection: AbstractConnection, source: str, target: str) -> int:
    """Move every message of `source` into `target`, confirmed before it is acked.

    Body and properties are kept (ids, headers with the failure history, timestamps);
    a wait queue's per-message expiration is dropped, so a moved retry copy waits out
    its queue's TTL again rather than expiring on the way.

    On a channel of its own, closed after: RabbitMQ 3.10's channel remembers the type
    of a queue it used, and crashes (INTERNAL_ERROR, the whole connection closed) when
    it publishes to a queue of that name declared anew with another type.
    """
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    async with channel:
        return await _move_on(channel, source, target)


async def _move_on(channel: AbstractChannel, source: str, target: str) -> int:
    from_queue = await channel.get_queue(source, ensure=False)
    moved = 0
    while (message := await from_queue.get(no_ack=False, fail=False)) is not None:
        # A quorum queue counts deliveries in a header of its own: not the message's.
        headers = {k: v for k, v in message.headers.items() if k != "x-delivery-count"}
        copy = copy_of(message, headers, aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(copy, routing_key=target, mandatory=True)
        await message.ack()
        moved += 1
    return moved


async def migrate_topology(settings: Settings) -> dict[str, int]:
    """Redeclare every queue whose arguments changed (a classic queue become quorum).

    A queue's type and arguments cannot change in place. For each such queue Q:
    declare ``Q.migrating`` (a plain quorum queue), move Q's messages there, delete Q,
    declare Q anew and bind it, move the messages back, delete ``Q.migrating``. Every
    message is confirmed in its new queue before it is acked in the old one, so a
    crash half-way loses nothing (run it again: it picks up a ``Q.migrating`` it left).
    Run it with the parts stopped: while Q is gone, events routed to it would find no
    queue. The outbox keeps what the API accepts meanwhile. Returns the messages moved
    per migrated queue.
    """
    topology = Topology.from_settings(settings)
    url = settings.rabbit_url.get_secret_value()
    connection = await connect(url, name=f"{topology.namespace}.migrate")
    moved: dict[str, int] = {}
    async with connection:
        channel = await connection.channel()
        exchanges = await _declare_exchanges(channel, topology)
        bound = bindings(topology)
        for name, arguments in queue_arguments(topology):
            holding = name + MIGRATING_SUFFIX
            held = await _exists(connection, holding)  # left by a run cut short
            if held and not await _matches(connection, holding, QUORUM):
                raise RuntimeError(f"{holding} exists and is not a quorum queue: move it by hand")
            if await _matches(connection, name, arguments):  # already right, or created now
                if held:
                    moved[name] = await _move(connection, holding, name)
                    await channel.queue_delete(holding)
                continue
            await _matches(connection, holding, QUORUM)  # declares it
            await _move(connection, name, holding)
            await channel.queue_delete(name)
            await _declare_queue(channel, name, arguments, bound.get(name, []), exchanges)
            moved[name] = await _move(connection, holding, name)
            await channel.queue_delete(holding)
            log.info("queue migrated", queue=name, messages=moved[name])
        # The rest: the event log, and the bindings of the queues that were right
        # already or created just now by `_matches`.
        await declare_topology(channel, topology)
    return moved
