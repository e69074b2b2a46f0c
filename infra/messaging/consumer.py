"""The shell every consumer runs in: parse, handle, and ack, retry or dead-letter.

A handler receives a validated message model and a `Delivery` (ids and attempt
number). It owns its transaction and its de-duplication (`infra.messaging.inbox`).
This shell decides what happens to the message afterwards:

- success -> ack;
- `PermanentFailure`, a body over `MAX_BODY_BYTES` (checked first, before anything
  is parsed), an unknown type, a `message_id` that is not a UUID, an unsupported
  `x-schema-version`, an undecodable body or a schema-invalid payload -> published
  to `<queue>.dlq` with the failure headers, then acked;
- anything else (transient) -> published to the wait queue of this attempt, whose
  TTL returns it to the queue later, then acked; after the last attempt it goes to
  `<queue>.dlq` instead.

The message is acked only after the broker confirmed the copy, so a crash in between
redelivers it (at-least-once; handlers are idempotent). If the copy cannot be
published the message is nacked with requeue, and the queue's `x-delivery-limit`
bounds how often that can happen. A poison message therefore never blocks the
messages behind it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, cast

import structlog
from aio_pika.abc import AbstractIncomingMessage
from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitMessage, RabbitQueue
from pydantic import ValidationError

from contracts import SCHEMA_VERSION_HEADER, Message
from infra import metrics
from infra.messaging import failures
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import ConsumedQueue
from infra.timeline.record import Event

log = structlog.get_logger()

# Pauses between attempts to publish a failed message's copy (about 30 s in all).
SETTLE_BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)

# The largest body the shell will parse. Our bodies are small: a typical OrderPaid is
# about 300 bytes, and one at its largest (200-character names and a 320-character
# address, all in 4-byte UTF-8) about 2.2 KiB. 256 KiB leaves a hundredfold room for
# the schemas to grow, yet keeps what one hostile message can cost bounded: parsing
# and validating it takes a millisecond or two, and a field inflated to megabytes is
# never forwarded into an e-mail, an HTTP call or a row. The broker's own limit
# (`max_message_size`, 128 MiB by default in RabbitMQ 3.x) is no guard at that scale.
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Delivery:
    """What a handler may want to know about the message besides its body."""

    message_id: uuid.UUID
    correlation_id: uuid.UUID | None
    message_type: str
    attempt: int  # 1 on the first try
    queue: str


class Handled(StrEnum):
    """What a handler did with a message; None from a handler means DONE."""

    DONE = "done"
    DUPLICATE = "duplicate"  # already applied before: skipped by the inbox


Handler = Callable[[Any, Delivery], Awaitable["Handled | None"]]
Recorder = Callable[[Sequence[Event]], Awaitable[bool]]


@dataclass(frozen=True)
class Route:
    """Which model a message type is parsed into, and who handles it."""

    model: type[Message]
    handle: Handler


class QueueConsumer:
    """Consumes one queue: routes by the AMQP `type` property to a handler."""

    def __init__(
        self,
        queue: ConsumedQueue,
        *,
        jitter: float = 0.2,
        rng: random.Random | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.queue = queue
        self.max_body_bytes = max_body_bytes
        self.routes: dict[str, Route] = {}
        self._publisher_instance: Publisher | None = None
        self._record: Recorder | None = None
        self._jitter = jitter
        self._rng = rng or random.Random()

    def bind(
        self,
        routes: Mapping[type[Message], Handler],
        publisher: Publisher,
        record: Recorder | None = None,
    ) -> None:
        """Attach the handlers, the publisher and the timeline recorder at start-up."""
        self.routes = {model.message_type: Route(model, handle) for model, handle in routes.items()}
        self._publisher_instance = publisher
        self._record = record

    def _publisher(self) -> Publisher:
        if self._publisher_instance is None:
            raise RuntimeError(f"consumer of {self.queue.name} used before bind()")
        return self._publisher_instance

    async def __call__(self, message: RabbitMessage) -> None:
        raw = message.raw_message
        attempt = _attempts_before(raw.headers.get(failures.ATTEMPTS)) + 1
        started = time.perf_counter()
        outcome = "done"
        note: tuple[str, str, datetime | None] | None = None  # timeline: kind, detail, at
        with structlog.contextvars.bound_contextvars(
            queue=self.queue.name,
            message_id=raw.message_id,
            checkout_id=raw.correlation_id,
            message_type=raw.type,
            attempt=attempt,
        ):
            if attempt == 1 and raw.headers.get("x-replay-count"):
                await self._note(
                    raw,
                    "message.replayed",
                    f"replay {raw.headers['x-replay-count']!s} into {self.queue.name}",
                )
            try:
                outcome = await self._process(raw, attempt) or Handled.DONE
            except failures.PermanentFailure as exc:
                outcome = "dead_lettered"
                at = await self._settle(
                    message, partial(self._dead_letter, raw, attempt, exc, "permanent")
                )
                note = ("message.dead_lettered", f"permanent, attempt {attempt}: {exc}", at)
            except Exception as exc:  # anything else is retried, never dropped
                if attempt >= self.queue.max_attempts:
                    outcome = "dead_lettered"
                    at = await self._settle(
                        message, partial(self._dead_letter, raw, attempt, exc, "transient")
                    )
                    note = (
                        "message.dead_lettered",
                        f"transient, {attempt} attempts: {type(exc).__name__}: {exc}",
                        at,
                    )
                else:
                    outcome = "retried"
                    await self._settle(message, partial(self._retry, raw, attempt, exc))
                    note = (
                        "message.retried",
                        f"attempt {attempt} failed: {type(exc).__name__}: {exc}",
                        None,
                    )
            else:
                await message.ack()
                if outcome == Handled.DUPLICATE:
                    note = ("duplicate.skipped", "already applied (inbox)", None)
            finally:
                elapsed = time.perf_counter() - started
                metrics.CONSUMED.labels(self.queue.name, str(outcome)).inc()
                metrics.HANDLING_SECONDS.labels(self.queue.name).observe(elapsed)
            if note is not None:
                await self._note(raw, note[0], note[1], at=note[2], duration_ms=elapsed * 1000)

    async def _note(
        self,
        raw: AbstractIncomingMessage,
        kind: str,
        detail: str,
        *,
        at: datetime | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """A line in the checkout's timeline (best effort; never fails the message)."""
        checkout_id = _uuid_or_none(raw.correlation_id)
        if self._record is None or checkout_id is None:
            return
        entry = Event(
            checkout_id=checkout_id,
            source=self.queue.name.rsplit(".", 1)[-1],
            kind=kind,
            at=at or datetime.now(UTC),
            message_id=_uuid_or_none(raw.message_id),
            message_type=raw.type,
            duration_ms=duration_ms,
            detail=detail[: failures.ERROR_MESSAGE_LIMIT],
        )
        await self._record([entry])

    async def _process(self, raw: AbstractIncomingMessage, attempt: int) -> Handled | None:
        # Before anything else looks at the body: its size is the one check that costs
        # nothing however large the body is.
        size = len(raw.body)
        if size > self.max_body_bytes:
            raise failures.PermanentFailure(
                f"message body is {size} bytes; the limit is {self.max_body_bytes}"
            )
        route = self.routes.get(raw.type or "")
        if route is None:
            known = ", ".join(sorted(self.routes))
            raise failures.PermanentFailure(f"unknown message type {raw.type!r}; expected {known}")
        try:
            message_id = uuid.UUID(str(raw.message_id))
        except ValueError:
            raise failures.PermanentFailure(
                f"message_id {raw.message_id!r} is not a UUID"
            ) from None
        version = raw.headers.get(SCHEMA_VERSION_HEADER, 1)
        if not isinstance(version, int) or version > route.model.schema_version:
            raise failures.PermanentFailure(
                f"{SCHEMA_VERSION_HEADER} {version!r} is not supported "
                f"(this consumer reads up to {route.model.schema_version})"
            )
        try:
            body = route.model.model_validate_json(raw.body)
        except ValidationError as exc:
            raise failures.PermanentFailure(f"invalid {raw.type} payload: {exc}") from None
        correlation = _uuid_or_none(raw.correlation_id)
        delivery = Delivery(message_id, correlation, raw.type or "", attempt, self.queue.name)
        return await route.handle(body, delivery)

    async def _settle(
        self, message: RabbitMessage, republish: Callable[[], Awaitable[datetime]]
    ) -> datetime | None:
        """Ack once the copy (retry or dead letter) is confirmed.

        If the copy cannot be published (our publisher's connection is reconnecting,
        say), keep the original unacked and try again with backoff: requeueing it at
        once would spin it through redeliveries until RabbitMQ's delivery limit
        dead-letters it without its retries or its reason. Only if the broker stays
        unusable for about half a minute is it requeued.
        """
        for pause in (*SETTLE_BACKOFF, None):
            try:
                at = await republish()
            except Exception as exc:
                if pause is None:
                    log.exception("could not re-publish a failed message; requeueing it")
                    await message.nack(requeue=True)
                    return None
                log.warning(
                    "could not re-publish a failed message yet; retrying",
                    error=repr(exc),
                    in_s=pause,
                )
                await asyncio.sleep(pause)
            else:
                await message.ack()
                return at
        return None

    def _failure_headers(
        self,
        raw: AbstractIncomingMessage,
        attempt: int,
        exc: BaseException,
        kind: str,
        at: datetime,
    ) -> dict[str, Any]:
        now = at.isoformat()
        headers = {k: v for k, v in raw.headers.items() if k not in failures.BROKER_HEADERS}
        headers.setdefault(failures.FIRST_FAILURE_AT, now)
        headers.update(
            {
                failures.ORIGINAL_QUEUE: self.queue.name,
                failures.ATTEMPTS: attempt,
                failures.LAST_FAILURE_AT: now,
                failures.ERROR_TYPE: type(exc).__name__,
                failures.ERROR_MESSAGE: str(exc)[: failures.ERROR_MESSAGE_LIMIT],
                failures.FAILURE_KIND: kind,
            }
        )
        return headers

    def _copy(
        self,
        raw: AbstractIncomingMessage,
        routing_key: str,
        headers: dict[str, Any],
        expiration_ms: int | None = None,
    ) -> Outgoing:
        return Outgoing(
            exchange="",
            routing_key=routing_key,
            body=raw.body,
            message_id=raw.message_id,
            correlation_id=raw.correlation_id,
            message_type=raw.type or "",
            headers=headers,
            timestamp=raw.timestamp,
            expiration_ms=expiration_ms,
        )

    async def _retry(self, raw: AbstractIncomingMessage, attempt: int, exc: Exception) -> datetime:
        delay_ms = self.queue.retry_delays_ms[attempt - 1]
        # Jitter spreads retries of a burst; it only shortens the delay, so the wait
        # queue's own TTL (the full delay) never holds a message back longer.
        expiration = max(1, round(delay_ms * (1 - self._jitter * self._rng.random())))
        log.warning("handling failed; will retry", error=repr(exc), retry_in_ms=expiration)
        at = datetime.now(UTC)
        headers = self._failure_headers(raw, attempt, exc, "transient", at)
        await self._publisher().publish(
            self._copy(raw, self.queue.wait_queue(attempt), headers, expiration)
        )
        return at

    async def _dead_letter(
        self, raw: AbstractIncomingMessage, attempt: int, exc: BaseException, kind: str
    ) -> datetime:
        log.error("dead-lettering message", error=repr(exc), failure=kind, dlq=self.queue.dlq)
        at = datetime.now(UTC)
        headers = self._failure_headers(raw, attempt, exc, kind, at)
        await self._publisher().publish(self._copy(raw, self.queue.dlq, headers))
        return at


def _attempts_before(header: object) -> int:
    """How often the message failed before, from its `x-attempts` header.

    Only a count this shell could have written is believed: a non-negative integer.
    Anything else (absent, a string, a bool, a negative number from a hostile or broken
    publisher) counts as 0. A negative count would otherwise index the retry delays
    from the end (a wrong wait queue) or past it (IndexError while settling: each
    delivery held for half a minute, then requeued, until RabbitMQ's delivery limit
    dead-letters it without its reason).
    """
    if isinstance(header, int) and not isinstance(header, bool) and header >= 0:
        return header
    return 0


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


async def _itself(message: RabbitMessage) -> RabbitMessage:
    """Decoder that hands the handler the message itself, body untouched.

    The shell validates the body, so a bad body is dead-lettered by us instead of failing
    inside FastStream before we see it. And the handler gets the message as its plain
    argument rather than through FastStream's `Context` annotation: that one is solved
    per message in a task group with a hop to a worker thread (about a tenth of the
    saga's CPU), where a plain argument is passed straight through.
    """
    return message


def subscribe(broker: RabbitBroker, consumer: QueueConsumer, *, prefetch: int) -> None:
    """Attach `consumer` to its queue. The topology is declared at start-up, not here."""

    async def on_message(message: Any) -> None:  # the decoded "body": see `_itself`
        await consumer(cast("RabbitMessage", message))

    broker.subscriber(
        RabbitQueue(consumer.queue.name, declare=False),
        channel=Channel(prefetch_count=prefetch),
        ack_policy=AckPolicy.MANUAL,
        decoder=_itself,
        no_reply=True,
        title=consumer.queue.name,
    )(on_message)
