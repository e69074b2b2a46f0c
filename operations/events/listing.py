"""`checkout events list`: the events of a range, by type and order, nothing consumed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from aio_pika.abc import AbstractConnection

from operations.events.event import LoggedEvent
from operations.events.reading import Patience, Window, read_log
from operations.events.selection import EventSelection


@dataclass
class Listing:
    """What a listing found; `scanned` counts every event of the range looked at."""

    stream: str
    window: Window
    events: list[LoggedEvent] = field(default_factory=list)
    scanned: int = 0
    last_seen: LoggedEvent | None = None  # for progress: how far the read has got


ListProgress = Callable[[Listing], None]


async def list_events(
    connection: AbstractConnection,
    stream: str,
    selection: EventSelection,
    *,
    started: datetime,
    patience: Patience | None = None,
    on_progress: ListProgress | None = None,
) -> Listing:
    """The matching events of `stream`, oldest first, up to its end when `started`.

    Raises:
        LogNotDeclared: the stream does not exist.
        LogLost: the broker went away while reading.
    """
    listing = Listing(stream, Window.of(selection, started))
    async with contextlib.aclosing(
        read_log(connection, stream, listing.window, patience=patience)
    ) as events:
        async for event in events:
            listing.scanned += 1
            listing.last_seen = event
            if selection.matches(event):
                listing.events.append(event)
            if on_progress is not None:
                on_progress(listing)
    return listing
