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

The event log (``infra.messaging.event_log``) keeps every public event for
``CHECKOUT_EVENT_LOG_DAYS``, and so also keeps an event nobody has subscribed to yet
routable: the relay publishes with ``mandatory`` and treats a return as an error. It
replaced the bounded ``{ns}.orders.journal`` queue, which ``declare_from_settings``
retires.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, ExchangeType

from infra.messaging.connect import connect
from infra.messaging.event_log import declare_event_log, retire_journal
from infra.settings import Settings

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


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding; idempotent, so every part runs it at start."""
    exchanges = {
        name: await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True)
        for name in (topology.orders_exchange, topology.internal_exchange)
    }
    await declare_event_log(
        channel, exchanges[topology.orders_exchange], topology.event_log, topology.event_log_days
    )

    for queue in topology.queues.values():
        await channel.declare_queue(queue.dlq, durable=True)
        for delay_ms in sorted(set(queue.retry_delays_ms)):
            await channel.declare_queue(
                f"{queue.name}.wait.{delay_ms}",
                durable=True,
                arguments={
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue.name,
                },
            )
        declared = await channel.declare_queue(
            queue.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue.dlq,
            },
        )
        for key in queue.routing_keys:
            await declared.bind(exchanges[queue.exchange], routing_key=key)


async def delete_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Remove a namespace's exchanges and queues (test clean-up)."""
    names = [topology.event_log]
    for queue in topology.queues.values():
        names += [queue.name, queue.dlq]
        names += [f"{queue.name}.wait.{d}" for d in sorted(set(queue.retry_delays_ms))]
    for name in names:
        await channel.queue_delete(name)
    for exchange in (topology.orders_exchange, topology.internal_exchange):
        await channel.exchange_delete(exchange)


async def declare_from_settings(settings: Settings) -> Topology:
    """Connect, declare, disconnect: what `checkout up` does before starting the parts."""
    topology = Topology.from_settings(settings)
    connection = await connect(settings.rabbit_url.get_secret_value())
    async with connection:
        await declare_topology(await connection.channel(), topology)
        await retire_journal(connection, topology.journal_queue, topology.orders_exchange)
    return topology
