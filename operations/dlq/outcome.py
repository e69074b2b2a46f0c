"""What a replay or purge did (or, in a dry run, would do)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from infra.messaging.topology import ConsumedQueue

Action = Literal["replay", "purge"]


@dataclass
class Outcome:
    """Filled in while the operation runs, so an interrupted one still says what it did."""

    action: Action
    queue: ConsumedQueue
    dry_run: bool = False
    total: int = 0  # the dead-letter queue's depth when the operation began
    scanned: int = 0
    message_ids: list[str | None] = field(default_factory=list)  # replayed or purged
    missing: list[str] = field(default_factory=list)  # asked for by id, not found

    @property
    def count(self) -> int:
        return len(self.message_ids)

    @property
    def verb(self) -> str:
        """What was done to the messages: `replayed` or `purged`."""
        return "replayed" if self.action == "replay" else "purged"

    def summary(self) -> dict[str, Any]:
        """The JSON summary the command prints on a pipe."""
        if self.action == "replay":
            return {
                "queue": self.queue.name,
                "replayed": self.count,
                "message_ids": self.message_ids,
                "missing": self.missing,
                "dry_run": self.dry_run,
            }
        return {
            "queue": self.queue.name,
            "purged": self.count,
            "message_ids": self.message_ids,
            "missing": self.missing,
        }


Progress = Callable[[Outcome], None]
"""Called after each message an operation looked at (for a progress bar)."""
