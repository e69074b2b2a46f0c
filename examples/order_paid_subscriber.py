"""A downstream team's subscriber to ``OrderPaid``: bind, de-duplicate, read the envelope.

The example of docs/downstream.md. It depends only on aio-pika and pydantic, not on
the checkout code, as a downstream service would::

    CHECKOUT_RABBIT_URL=amqp://guest:guest@127.0.0.1:5672/ CHECKOUT_NAMESPACE=checkout \\
        python examples/order_paid_subscriber.py [--queue billing.order-paid]

It declares its own durable queue (default ``example.<namespace>.order-paid``) bound
to the topic exchange ``<namespace>.orders`` with ``order.paid``, plus a parking
queue ``<queue>.parked`` that receives what it cannot read (an unknown
``x-schema-version``, another type, an invalid body, a failed handler). Each event
is printed as one JSON line on stdout; diagnostics go to stderr. Ctrl-C stops it.

Joining late: start it first (so that new events reach its queue live), then ask the
checkout team for a backfill into its queue (``checkout events backfill --to-queue
<queue> --since 7d --type OrderPaid --reason ...``). The copies carry the original
``message_id``, so ``SeenIds`` drops the ones that also came live: each event is
handled once (docs/downstream.md, "Joining late").

`subscribe(config, handle, stop=...)` is the core, importable by a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import ChannelNotFoundEntity
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_NAMESPACE = "checkout"
EVENT_TYPE = "OrderPaid"
ROUTING_KEY = "order.paid"
SCHEMA_VERSION_HEADER = "x-schema-version"
SUPPORTED_VERSIONS = frozenset({1})  # the versions of OrderPaid this consumer understands


# -- What we read: a tolerant reader of docs/schemas/OrderPaid.v1.json ----------------


class Customer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    email: str
    name: str


class OrderPaid(BaseModel):
    """The fields this consumer needs; fields added later (optional) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    order_id: UUID
    checkout_id: UUID
    payment_id: UUID
    order_name: str
    amount: Decimal  # a string on the wire ("19.99"): never a float
    currency: str
    customer: Customer
    paid_at: datetime


@dataclass(frozen=True)
class Delivery:
    """One event with its envelope."""

    message_id: str
    correlation_id: str | None  # the checkout_id
    schema_version: int
    timestamp: datetime | None
    event: OrderPaid


Handler = Callable[[Delivery], Awaitable[None]]


# -- Configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriberConfig:
    rabbit_url: str = DEFAULT_RABBIT_URL
    namespace: str = DEFAULT_NAMESPACE
    queue: str | None = None  # default: example.<namespace>.order-paid
    prefetch: int = 50

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, queue: str | None = None
    ) -> SubscriberConfig:
        return cls(
            rabbit_url=environ.get("CHECKOUT_RABBIT_URL", DEFAULT_RABBIT_URL),
            namespace=environ.get("CHECKOUT_NAMESPACE", DEFAULT_NAMESPACE),
            queue=queue,
        )

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.orders"

    @property
    def queue_name(self) -> str:
        return self.queue or f"example.{self.namespace}.order-paid"

    @property
    def parked_queue(self) -> str:
        return f"{self.queue_name}.parked"


# -- De-duplication --------------------------------------------------------------------


class SeenIds:
    """Message ids already handled (or being handled), the oldest forgotten first.

    In memory, so only good for one process and until it restarts. Real code records
    the id in a table with a unique key, in the same transaction as its effects
    (docs/downstream.md, "De-duplicate").
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def claim(self, message_id: str) -> bool:
        """True if the id is new (and now taken); False for a duplicate."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return True

    def release(self, message_id: str) -> None:
        """Forget an id whose handling failed, so a redelivery is handled again."""
        self._ids.pop(message_id, None)


@dataclass
class Stats:
    handled: int = 0
    duplicates: int = 0
    parked: int = 0


# -- Reading the envelope --------------------------------------------------------------


class Unreadable(Exception):
    """This consumer cannot handle the message: it is parked, not retried."""


def schema_version(headers: Mapping[str, Any]) -> int | None:
    value = headers.get(SCHEMA_VERSION_HEADER)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def read(message: AbstractIncomingMessage) -> Delivery:
    """The envelope and body of an OrderPaid, or `Unreadable` saying why not."""
    if not message.message_id:
        raise Unreadable("no message_id")
    if message.type != EVENT_TYPE:
        raise Unreadable(f"type {message.type!r}, expected {EVENT_TYPE!r}")
    version = schema_version(message.headers or {})
    if version not in SUPPORTED_VERSIONS:
        raise Unreadable(
            f"{SCHEMA_VERSION_HEADER} {version!r} not understood "
            f"(this consumer reads {sorted(SUPPORTED_VERSIONS)})"
        )
    try:
        event = OrderPaid.model_validate_json(message.body)
    except ValidationError as exc:
        raise Unreadable(f"invalid body ({exc.error_count()} errors)") from None
    return Delivery(
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        schema_version=version,
        timestamp=message.timestamp,
        event=event,
    )


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def process(
    message: AbstractIncomingMessage, handle: Handler, seen: SeenIds, stats: Stats
) -> None:
    """Handle one delivery, then ack; a duplicate is acked unhandled; the rest is parked."""
    try:
        delivery = read(message)
    except Unreadable as exc:
        stats.parked += 1
        _note(f"parked message {message.message_id}: {exc}")
        await message.reject(requeue=False)  # dead-lettered to <queue>.parked
        return
    if not seen.claim(delivery.message_id):
        stats.duplicates += 1
        _note(f"duplicate {delivery.message_id} ignored")
        await message.ack()
        return
    try:
        await handle(delivery)
    except Exception as exc:
        # Real code would retry a transient failure after a delay before parking.
        seen.release(delivery.message_id)
        stats.parked += 1
        _note(f"parked message {delivery.message_id}: handler failed: {exc!r}")
        await message.reject(requeue=False)
        return
    stats.handled += 1
    await message.ack()


# -- Binding and consuming ---------------------------------------------------------------


async def declare(channel: AbstractChannel, config: SubscriberConfig) -> AbstractQueue:
    """Our durable queue bound to `order.paid`, and its parking queue; idempotent."""
    try:
        exchange = await channel.get_exchange(config.exchange, ensure=True)
    except ChannelNotFoundEntity:
        raise SystemExit(
            f"exchange {config.exchange!r} not found: is CHECKOUT_NAMESPACE right, and has "
            "the checkout system started once?"
        ) from None
    await channel.declare_queue(config.parked_queue, durable=True)
    queue = await channel.declare_queue(
        config.queue_name,
        durable=True,
        arguments={
            "x-dead-letter-exchange": "",  # the default exchange: routes by queue name
            "x-dead-letter-routing-key": config.parked_queue,
        },
    )
    await queue.bind(exchange, routing_key=ROUTING_KEY)
    return queue


async def subscribe(
    config: SubscriberConfig,
    handle: Handler,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    seen: SeenIds | None = None,
    stats: Stats | None = None,
) -> Stats:
    """Consume OrderPaid until `stop` is set; `ready` is set once the queue is bound."""
    seen = seen if seen is not None else SeenIds()
    stats = stats if stats is not None else Stats()
    # A robust connection reconnects after a broker restart and re-declares the
    # queue, its binding and the consumer.
    connection = await aio_pika.connect_robust(config.rabbit_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=config.prefetch)
        queue = await declare(channel, config)

        async def on_message(message: AbstractIncomingMessage) -> None:
            await process(message, handle, seen, stats)

        tag = await queue.consume(on_message)
        _note(f"listening on {config.queue_name} (bound to {config.exchange} with {ROUTING_KEY})")
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            await queue.cancel(tag)
    return stats


async def print_event(delivery: Delivery) -> None:
    """The example's handler: one JSON line per event (no customer e-mail: it is personal)."""
    event = delivery.event
    line = {
        "type": EVENT_TYPE,
        "message_id": delivery.message_id,
        "schema_version": delivery.schema_version,
        "order_id": str(event.order_id),
        "checkout_id": str(event.checkout_id),
        "order_name": event.order_name,
        "amount": str(event.amount),
        "currency": event.currency,
        "paid_at": event.paid_at.isoformat(),
    }
    print(json.dumps(line), flush=True)


async def _main(config: SubscriberConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats = await subscribe(config, print_event, stop=stop)
    _note(f"stopped: {stats.handled} handled, {stats.duplicates} duplicates, {stats.parked} parked")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print every OrderPaid event, once each.")
    parser.add_argument("--queue", help="queue name (default example.<namespace>.order-paid)")
    args = parser.parse_args(argv)
    asyncio.run(_main(SubscriberConfig.from_env(queue=args.queue)))


if __name__ == "__main__":
    main()
