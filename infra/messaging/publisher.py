"""Publishing with publisher confirms and `mandatory`, with exact AMQP properties.

Used by the outbox relay, the payment step's replies and the retry/dead-letter path.
Each `publish` returns only when the broker has confirmed the message; a nack, or a
return because nothing is bound to the routing key, raises. Many publishes may be in
flight at once (`asyncio.gather`): their confirms are awaited together.

`publish_many` (or `send_many`, then `SentBatch.outcomes`) is the relay's batch path:
the whole batch is written at once before any confirm is awaited, then all confirms are
awaited together, and the outcome of each message is returned rather than raised, so
that the caller can keep what the broker confirmed and retry only the rest. `publish`
keeps its own path and semantics (the consumer shell's retry and dead-letter copies).

A channel that only nacks is replaced (`NackStreak`). RabbitMQ 3.10 can leave a
channel nacking every publish to a quorum queue for good: when the channel's first
publish to that queue happened while the queue had no leader (a node of the cluster
down, an election under way), every later publish on that channel to that queue is
nacked, with no end (seen for ten minutes), though the queue has long had a leader
again and other channels publish to it fine. A publisher that kept retrying on that
channel would never get a message through; a fresh channel does at once. So after
`NACK_STREAK_LIMIT` publishes (or batches) in a row that were nacked and none acked,
the next publish first opens a new channel and closes the old one.

A batch whose confirms do not all come within `CONFIRM_TIMEOUT_S` counts as not
confirmed (`ConfirmTimeout`: the relay keeps its rows and publishes them again, at least
once) and its channel is replaced the same way. A confirm is an answer the broker owes;
once, in the cluster drill, a channel that came back with its connection took a batch
and never answered it, and the relay waited on it for minutes, until the next
connection loss failed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aio_pika
import aiormq
import pamqp.frame
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq import spec
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from contracts import CONTENT_TYPE, SCHEMA_VERSION_HEADER, Message
from infra.messaging.connect import connect_robust

log = structlog.get_logger()

PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: body bytes plus the properties of CONTRACT.md section 4."""

    exchange: str  # "" is the default exchange (routing key = queue name)
    routing_key: str
    body: bytes
    # Kept as given: a dead-lettered copy must carry the original ids even when
    # they are malformed.
    message_id: uuid.UUID | str | None
    correlation_id: uuid.UUID | str | None
    message_type: str
    headers: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    expiration_ms: int | None = None

    @classmethod
    def of(
        cls,
        message: Message,
        *,
        exchange: str,
        message_id: uuid.UUID,
        correlation_id: uuid.UUID,
        headers: dict[str, Any] | None = None,
    ) -> Outgoing:
        return cls(
            exchange=exchange,
            routing_key=message.routing_key,
            body=message.model_dump_json().encode(),
            message_id=message_id,
            correlation_id=correlation_id,
            message_type=message.message_type,
            headers={SCHEMA_VERSION_HEADER: message.schema_version, **(headers or {})},
        )

    def to_amqp(self) -> aio_pika.Message:
        return aio_pika.Message(
            self.body,
            message_id=str(self.message_id) if self.message_id else None,
            correlation_id=str(self.correlation_id) if self.correlation_id else None,
            type=self.message_type,
            content_type=CONTENT_TYPE,
            timestamp=self.timestamp or datetime.now(UTC),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=self.headers,
            expiration=self.expiration_ms / 1000 if self.expiration_ms is not None else None,
        )

    def properties(self) -> spec.Basic.Properties:
        """The AMQP properties `to_amqp()` would send, built without an `aio_pika.Message`.

        The batch path skips aio-pika's message object (its validation and locking cost
        more than the publish itself at relay rates); the properties are the same,
        including aio-pika's default priority 0, so a consumer cannot tell the two apart
        (but for an expiration, which is sent here exactly as the milliseconds given).
        """
        return spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            headers=self.headers,
            delivery_mode=PERSISTENT,
            priority=0,
            correlation_id=str(self.correlation_id) if self.correlation_id else None,
            expiration=str(self.expiration_ms) if self.expiration_ms is not None else None,
            message_id=str(self.message_id) if self.message_id else None,
            timestamp=self.timestamp or datetime.now(UTC),
            message_type=self.message_type,
        )


CONFIRM_TIMEOUT_S = 30.0
"""How long a publish's or a batch's confirms are awaited before it counts as not
confirmed."""

CLOSE_TIMEOUT_S = 5.0
"""How long closing a replaced channel may take before it is left to its fate."""


class SentBatch:
    """A batch written to the broker: one confirm future per message, in batch order."""

    def __init__(
        self,
        channel: aiormq.Channel | None,
        confirms: list[asyncio.Future[Any]],
        tags: list[tuple[str, int]],
        on_outcomes: Callable[[Iterable[BaseException | None]], None] | None = None,
        *,
        timeout: float = CONFIRM_TIMEOUT_S,
    ) -> None:
        self._confirms = confirms
        self._timeout = timeout
        self._all = asyncio.gather(*confirms, return_exceptions=True)
        self._on_outcomes = on_outcomes
        if channel is None or not confirms:
            return
        # Stands for the batch in the channel's future store: rejected, like aiormq's
        # own confirm futures, when the channel or connection closes (at once if it
        # already has); released once every confirm is in.
        guard = channel.create_future()
        guard.add_done_callback(partial(_reject_pending, confirms))
        self._all.add_done_callback(partial(_release, channel, guard, tags))

    async def outcomes(self) -> list[BaseException | None]:
        """Wait for every confirm; one outcome per message, in batch order.

        None once the broker confirmed the message, else the reason it was not
        (`DeliveryError` for a nack, `PublishError` for a `mandatory` message returned
        as unroutable, a channel or connection error when the confirm was lost). A
        message with an outcome other than None may or may not have reached a queue:
        publish it again (at least once). One message's failure does not affect the
        others, so the caller keeps whatever the broker did confirm. A confirm not in
        after the batch's timeout is `ConfirmTimeout`.
        """
        await asyncio.wait({self._all}, timeout=self._timeout)
        outcomes = [_outcome(confirm, self._timeout) for confirm in self._confirms]
        if self._on_outcomes is not None:
            self._on_outcomes(outcomes)
        return outcomes


async def _send_batch(
    channel: aiormq.Channel,
    batch: Sequence[Outgoing],
    on_outcomes: Callable[[Iterable[BaseException | None]], None] | None = None,
    confirm_within: float = CONFIRM_TIMEOUT_S,
) -> SentBatch:
    """Write `batch` to `channel` as one buffer, and file one confirm future per message
    (awaited at most `confirm_within` s by `SentBatch.outcomes`).

    What `aiormq.Channel.basic_publish` does for one message, done once for the batch:
    the frames are marshalled together (a destination's method frame only once) and
    handed to the connection's writer as one buffer: one socket write instead of one
    per message, and no task, lock round and writer wake-up per message, which together
    were most of the publishing CPU at relay rates.

    The bookkeeping is aiormq's own, under the channel's lock so that a concurrent
    `basic_publish` (a single `Publisher.publish`) cannot interleave: the broker numbers
    a channel's publishes 1, 2, 3... in the order it reads them, so the k-th message of
    the buffer gets delivery tag `channel.delivery_tag + k`; its confirm future is filed
    under that tag (where aiormq's reader resolves acks, nacks and returns), and its
    message id is mapped to the tag (which is how aiormq routes a `Basic.Return`,
    unroutable, to the right future). The tags are taken only once the buffer is
    queued, with no await in between, so no ack can come first, and a failure to queue
    the buffer leaves the channel's numbering untouched.

    aiormq rejects its own confirm futures when the channel or connection closes, by
    keeping each one in the channel's future store. Rather than pay for that per
    message, one future of the store stands for the whole batch (see `SentBatch`).
    """
    number = channel.number
    step = channel.max_content_size
    methods: dict[tuple[str, str], bytes] = {}
    chunks: list[bytes] = []
    message_ids: list[str] = []
    for outgoing in batch:
        destination = (outgoing.exchange, outgoing.routing_key)
        method = methods.get(destination)
        if method is None:
            publish = spec.Basic.Publish(
                exchange=outgoing.exchange, routing_key=outgoing.routing_key, mandatory=True
            )
            method = methods[destination] = pamqp.frame.marshal(publish, number)
        properties = outgoing.properties()
        if not properties.message_id:  # aiormq's rule: a return is matched by message id
            properties.message_id = uuid.uuid4().hex
        message_ids.append(properties.message_id)
        body = outgoing.body
        header = ContentHeader(properties=properties, body_size=len(body))
        chunks.append(method)
        chunks.append(pamqp.frame.marshal(header, number))
        for at in range(0, len(body), step):
            chunks.append(pamqp.frame.marshal(ContentBody(body[at : at + step]), number))
    buffer = ChannelFrame(payload=b"".join(chunks), should_close=False)
    loop = asyncio.get_running_loop()
    async with channel.lock:
        await channel.write_queue.put(buffer)
        first = channel.delivery_tag + 1
        channel.delivery_tag += len(message_ids)
        tags = range(first, first + len(message_ids))
        confirms: list[asyncio.Future[Any]] = [loop.create_future() for _ in tags]
        for tag, message_id, confirm in zip(tags, message_ids, confirms, strict=True):
            channel.confirmations[tag] = confirm
            channel.message_id_delivery_tag[message_id] = tag
        return SentBatch(
            channel,
            confirms,
            list(zip(message_ids, tags, strict=True)),
            on_outcomes,
            timeout=confirm_within,
        )


def _reject_pending(confirms: list[asyncio.Future[Any]], guard: asyncio.Future[Any]) -> None:
    """The batch's guard is done: if the channel closed, fail every pending confirm.

    A close that aiormq reports as a cancellation (a client-side close does) becomes a
    channel error: it is the batch that failed, not the task awaiting it.
    """
    if not guard.cancelled() and guard.exception() is None:
        return  # released: every confirm is in
    cause = None if guard.cancelled() else guard.exception()
    reason = cause
    if reason is None or isinstance(reason, asyncio.CancelledError):
        reason = aiormq.exceptions.ChannelInvalidStateError(f"channel closed: {cause!r}")
    for confirm in confirms:
        if not confirm.done():
            confirm.set_exception(reason)


def _release(
    channel: aiormq.Channel,
    guard: asyncio.Future[Any],
    tags: list[tuple[str, int]],
    _: object,
) -> None:
    """Every confirm is in: release the guard, and drop the message ids' entries as
    `basic_publish` does (unless a later publish has taken the id over)."""
    if not guard.done():
        guard.set_result(None)
    mapped = channel.message_id_delivery_tag
    for message_id, tag in tags:
        if mapped.get(message_id) == tag:
            del mapped[message_id]


class NotConfirmed(Exception):
    """The broker answered a publish with something other than an ack."""


class ConfirmTimeout(NotConfirmed):
    """The broker did not answer a publish in time (`CONFIRM_TIMEOUT_S`)."""

    @classmethod
    def after(cls, waited: float) -> ConfirmTimeout:
        return cls(f"no confirm from the broker in {waited:g} s")


def _outcome(confirm: asyncio.Future[Any], waited: float) -> BaseException | None:
    """A message's outcome from its confirm future, waited for `waited` seconds."""
    if not confirm.done():
        return ConfirmTimeout.after(waited)
    if confirm.cancelled():
        return aiormq.exceptions.ChannelInvalidStateError("confirm cancelled")
    return _unconfirmed(confirm.exception() or confirm.result())


def _unconfirmed(result: object) -> BaseException | None:
    """None for a broker ack; otherwise why the message does not count as confirmed.

    A returned or nacked message arrives here as the exception aiormq set on its
    confirm. The last branch is for a channel opened without `on_return_raises` or
    without confirms (not one `Publisher.connect` makes), whose answer would otherwise
    pass for a confirm.
    """
    if isinstance(result, spec.Basic.Ack):
        return None
    if isinstance(result, BaseException):
        return result
    return NotConfirmed(f"the broker answered {result!r}, not an ack")


NACK_STREAK_LIMIT = 3
"""Publishes (or batches) nacked in a row, none acked, before the channel is replaced."""


def nacked(outcome: BaseException | None) -> bool:
    """Whether a publish's outcome is the broker's nack (not a return, not a lost confirm)."""
    return isinstance(outcome, aiormq.exceptions.DeliveryError) and isinstance(
        outcome.frame, spec.Basic.Nack
    )


class NackStreak:
    """Counts publish rounds nacked in a row on one channel (see the module docstring).

    A round is one `publish` or one batch: nacked if any of its messages was nacked and
    none acked. An ack ends the streak; a return or a lost confirm leaves it as it is.
    """

    def __init__(self, limit: int = NACK_STREAK_LIMIT) -> None:
        self.limit = limit
        self.count = 0
        self.unanswered = False  # a confirm did not come in time: replace the channel

    def record(self, outcomes: Iterable[BaseException | None]) -> None:
        acked = nacks = False
        for outcome in outcomes:
            acked = acked or outcome is None
            nacks = nacks or nacked(outcome)
            self.unanswered = self.unanswered or isinstance(outcome, ConfirmTimeout)
        if acked:
            self.count = 0
        elif nacks:
            self.count += 1

    @property
    def stuck(self) -> bool:
        return self.unanswered or self.count >= self.limit

    def reset(self) -> None:
        self.count = 0
        self.unanswered = False


class Publisher:
    """A confirmed, mandatory publisher on its own robust connection.

    It declares nothing: the topology is declared apart, at start-up, on a connection
    of its own (`infra.messaging.topology.declare_apart`). A robust channel re-declares
    on every reconnect what was declared on it, and a re-declaration can fail while the
    cluster is degraded, which would keep the channel from coming back at all.
    """

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel) -> None:
        self._connection = connection
        self._channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}
        self._nacks = NackStreak()
        self._renewing = asyncio.Lock()
        self.channels_renewed = 0
        self.confirm_timeout = CONFIRM_TIMEOUT_S  # for `publish` and every `SentBatch`

    @classmethod
    async def connect(cls, url: str, *, name: str | None = None) -> Publisher:
        """Connect to `url` (or to one of its comma-separated URLs, with failover);
        `name` shows in `rabbitmqctl list_connections` (e.g. "checkout.relay")."""
        connection = await connect_robust(url, name=name or "checkout.publisher")
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(connection, channel)

    async def _fresh_channel_if_stuck(self) -> None:
        """Replace a channel that only nacks (see the module docstring) before using it."""
        if not self._nacks.stuck:
            return
        async with self._renewing:
            if not self._nacks.stuck:  # another publish renewed it meanwhile
                return
            old = self._channel
            unanswered = self._nacks.unanswered
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchanges.clear()
            self._nacks.reset()
            self.channels_renewed += 1
            if unanswered:
                log.warning(
                    "publisher channel left a batch unconfirmed; replaced by a fresh channel",
                    waited_s=self.confirm_timeout,
                )
            else:
                log.warning(
                    "publisher channel nacked every publish; replaced by a fresh channel",
                    nacked_in_a_row=self._nacks.limit,
                )
            # Its unconfirmed publishes fail with the close and are published again. A
            # channel that stopped answering may not answer the close either: a few
            # seconds, not the heartbeat's minute (or forever without heartbeats).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), timeout=CLOSE_TIMEOUT_S)

    async def _exchange(self, name: str) -> AbstractExchange:
        if name == "":
            return self._channel.default_exchange
        if name not in self._exchanges:
            # The topology is declared at start-up; here we only look it up.
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(self, outgoing: Outgoing) -> None:
        """Publish and wait for the broker's confirm; raise if nacked or unroutable."""
        await self._fresh_channel_if_stuck()
        exchange = await self._exchange(outgoing.exchange)
        try:
            await exchange.publish(
                outgoing.to_amqp(),
                outgoing.routing_key,
                mandatory=True,
                timeout=self.confirm_timeout,
            )
        except aiormq.exceptions.DeliveryError as exc:
            self._nacks.record([exc])
            raise
        except TimeoutError:
            unanswered = ConfirmTimeout.after(self.confirm_timeout)
            self._nacks.record([unanswered])
            raise unanswered from None
        self._nacks.record([None])

    async def publish_many(self, batch: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish every message of `batch`, then await all their confirms together.

        `send_many` and `SentBatch.outcomes` in one call; see them for what is returned
        and raised.
        """
        return await (await self.send_many(batch)).outcomes()

    async def send_many(self, batch: Sequence[Outgoing]) -> SentBatch:
        """Write every message of `batch` to the broker; await no confirm yet.

        Returns once the batch is handed to the connection, in order and as one write
        (see `_send_batch`); `SentBatch.outcomes()` then awaits the confirms together.
        Splitting the two lets the relay claim and write its next batch while this one
        waits for its confirms. Raises, having sent nothing, when there is no open
        channel.
        """
        if not batch:
            return SentBatch(None, [], [])
        await self._fresh_channel_if_stuck()
        if self._channel.is_closed:
            # As `publish` does: fail at once while the broker is away rather than wait
            # for a reconnection (a robust channel's `get_underlay_channel` would).
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self._channel!r} closed")
        channel = await self._channel.get_underlay_channel()
        if not isinstance(channel, aiormq.Channel) or not channel.publisher_confirms:
            raise TypeError(f"not an aiormq channel with publisher confirms: {channel!r}")
        return await _send_batch(channel, batch, self._nacks.record, self.confirm_timeout)

    @property
    def channel(self) -> AbstractChannel:
        return self._channel

    @property
    def connection(self) -> AbstractRobustConnection:
        """The publisher's connection: other channels may be opened on it."""
        return self._connection

    @property
    def is_connected(self) -> bool:
        return not self._connection.is_closed

    async def close(self) -> None:
        await self._connection.close()
