"""Reading the log from a time or an offset up to its end, without consuming it.

A reader attaches a consumer of its own to the stream (`x-stream-offset`: an offset,
or a time; RabbitMQ starts at the first chunk written at or after it) with a prefetch
(streams require one) and acks each event once handled, which only asks for more:
nothing is removed, other readers and later reads see the same events.

Over AMQP 0.9.1 a stream has no end marker (the broker's message count lags by
seconds), so the reader ends on whichever comes first:

- an event stamped after the range: after `until` plus `LATE_MARGIN` when one is
  given (the relay stamps an event when it is written and publishes it a moment later,
  so the log is in time order only roughly), or after the moment the command started;
- `Patience.idle` seconds without a delivery once the first has come
  (`Patience.first` before it): the reader has caught up with the stream's end.

A lost broker is never taken for the end: the channel's closing wakes the reader,
which raises `LogLost`.

Reading from a time attaches `ATTACH_MARGIN` earlier than asked, for clocks that
differ between the relay and the broker; events before the range are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, ChannelNotFoundEntity

from operations.channels import close_quietly
from operations.events.errors import LogLost, LogNotDeclared
from operations.events.event import LoggedEvent
from operations.events.selection import EventSelection

ATTACH_MARGIN = timedelta(seconds=60)
LATE_MARGIN = timedelta(seconds=60)
PREFETCH = 200


@dataclass(frozen=True)
class Patience:
    """How long the reader waits for a delivery before it takes the stream as ended."""

    first: float = 3.0  # for the first event (attaching to a long log takes a moment)
    idle: float = 1.0  # between events


@dataclass(frozen=True)
class Window:
    """Where a read starts and where it stops."""

    selection: EventSelection
    stop_after: datetime  # the first event stamped after this ends the read

    @classmethod
    def of(cls, selection: EventSelection, started: datetime) -> Window:
        if selection.until is not None:
            return cls(selection, min(selection.until + LATE_MARGIN, started))
        return cls(selection, started)

    @property
    def end(self) -> datetime:
        """The last time an event may be stamped to be in the range."""
        return min(self.selection.until or self.stop_after, self.stop_after)

    def start_argument(self) -> Any:
        """The consumer's `x-stream-offset`: an offset, a time, or the log's first event."""
        if self.selection.since_offset is not None:
            return self.selection.since_offset
        if self.selection.since is not None:
            return self.selection.since - ATTACH_MARGIN
        return "first"


class _Closed:
    def __init__(self, cause: BaseException | None) -> None:
        self.cause = cause


class _Attached:
    """A consumer on the stream whose deliveries and closing land in one queue, in order."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.inbox: asyncio.Queue[AbstractIncomingMessage | _Closed] = asyncio.Queue()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put_nowait(message)

    def on_close(self, _sender: object, cause: BaseException | None = None) -> None:
        self.inbox.put_nowait(_Closed(cause))

    async def next(self, patience: float) -> AbstractIncomingMessage | None:
        """The next delivery; None when there was none for `patience` seconds."""
        try:
            async with asyncio.timeout(patience):
                item = await self.inbox.get()
        except TimeoutError:
            if self.channel.is_closed:
                raise LogLost(RuntimeError("channel closed")) from None
            return None
        if isinstance(item, _Closed):
            raise LogLost(item.cause or RuntimeError("channel closed"))
        return item


@contextlib.asynccontextmanager
async def _attach(
    connection: AbstractConnection, name: str, start: Any, prefetch: int
) -> AsyncIterator[_Attached]:
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            queue = await channel.get_queue(name, ensure=True)  # a passive declare
        except ChannelNotFoundEntity:
            raise LogNotDeclared(name) from None
        await channel.set_qos(prefetch_count=prefetch)
        attached = _Attached(channel)
        channel.close_callbacks.add(attached.on_close)
        await queue.consume(attached.on_message, arguments={"x-stream-offset": start})
        yield attached
    except (AMQPError, OSError, ChannelInvalidStateError) as exc:
        raise LogLost(exc) from exc
    finally:
        await close_quietly(channel)


async def read_log(
    connection: AbstractConnection,
    name: str,
    window: Window,
    *,
    patience: Patience | None = None,
    prefetch: int = PREFETCH,
) -> AsyncGenerator[LoggedEvent, None]:
    """The events of `window`'s range in log order, up to the end (see the module).

    Filters by time and offset only; the caller applies types and order, so that it can
    count what it looked at. Each event is acked when the caller asks for the next one.
    Use it with `contextlib.aclosing`.

    Raises:
        LogNotDeclared: the stream does not exist.
        LogLost: the broker went away while reading.
    """
    patience = patience or Patience()
    selection = window.selection
    async with _attach(connection, name, window.start_argument(), prefetch) as log:
        timeout = patience.first
        while True:
            message = await log.next(timeout)
            if message is None:
                return
            timeout = patience.idle
            event = LoggedEvent.of(message)
            if event.timestamp is not None and event.timestamp > window.stop_after:
                return
            if selection.in_range(event):
                yield event
            try:
                await message.ack()
            # Not only AMQPError and OSError: a connection closed while the ack is on its
            # way makes aiormq fail it with the bare Exception it closed the channel
            # with. Whatever stops the ack, the read has lost the broker, never reached
            # the end, and must not be taken for one.
            except Exception as exc:
                raise LogLost(exc) from exc
