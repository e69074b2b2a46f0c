"""Which events of the log an operation takes: a time range, some types, one order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from operations.events.event import LoggedEvent


@dataclass(frozen=True)
class EventSelection:
    """Events stamped in [`since`, `until`] (either open), of `types`, of `order_id`.

    A type matches an event's `type` (`OrderPaid`) or its routing key (`order.paid`).
    No types: every type.
    """

    since: datetime | None = None
    until: datetime | None = None
    types: tuple[str, ...] = ()
    order_id: str | None = None
    since_offset: int | None = None  # resume: the first offset to look at
    _types: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.since and self.until and self.until < self.since:
            raise ValueError("--until is before --since")
        if self.since_offset is not None and self.since_offset < 0:
            raise ValueError("--since-offset must be 0 or more")
        object.__setattr__(self, "_types", frozenset(t.strip() for t in self.types if t.strip()))

    def in_range(self, event: LoggedEvent) -> bool:
        """Whether the event's time and offset are in the selection's range."""
        if self.since_offset is not None and event.offset < self.since_offset:
            return False
        if event.timestamp is None:
            return self.since is None and self.until is None
        if self.since is not None and event.timestamp < self.since:
            return False
        return self.until is None or event.timestamp <= self.until

    def matches(self, event: LoggedEvent) -> bool:
        if not self.in_range(event):
            return False
        if self._types and not ({event.message_type, event.routing_key} & self._types):
            return False
        return self.order_id is None or event.order_id == self.order_id

    def as_json(self) -> dict[str, Any]:
        """The selection as the audit log and the JSON summary keep it."""
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "types": list(self.types),
            "order_id": self.order_id,
            "since_offset": self.since_offset,
        }
