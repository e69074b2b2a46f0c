"""What can go wrong with a dead-letter operation.

```
DlqError
├── UnknownQueue       the name is no consumed queue, nor its .dlq, nor its short key
├── QueueNotDeclared   the broker has no such queue: the topology was never declared
├── AuditUnavailable   the audit log cannot be read or written (database down, not migrated)
└── Interrupted        the broker failed part-way; `outcome` says what was done before that
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from operations.dlq.outcome import Outcome


class DlqError(Exception):
    """Base of the dead-letter operations' errors."""


class UnknownQueue(DlqError):
    """No consumed queue has this name; `known` lists the ones that do."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(
            f"unknown queue {name!r}; known: {', '.join(self.known)} "
            "(each also by its .dlq name or its short name)"
        )


class QueueNotDeclared(DlqError):
    """The queue does not exist on the broker."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"queue {name!r} does not exist on the broker")


class AuditUnavailable(DlqError):
    """The audit log cannot be used; `cause` is the database's error.

    `outcome` is set when the messages were already moved and only the record failed.
    """

    def __init__(self, cause: BaseException, outcome: Outcome | None = None) -> None:
        self.cause = cause
        self.outcome = outcome
        super().__init__(str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause))

    @property
    def not_migrated(self) -> bool:
        """True when the database answers but has no audit table yet."""
        return type(getattr(self.cause, "orig", None)).__name__ == "UndefinedTable"

    def already_moved(self) -> str | None:
        """What was moved before the record failed, for the operator (None: nothing was)."""
        done = self.outcome
        if done is None:
            return None
        ids = ", ".join(str(i) for i in done.message_ids)
        return f"{done.count} messages were {done.verb} ({ids}) but the audit log was not written"


class Interrupted(DlqError):
    """The broker failed during a replay or purge; `outcome` holds what was done before."""

    def __init__(self, outcome: Outcome, cause: BaseException) -> None:
        self.outcome = outcome
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")

    def describe(self) -> str:
        """What failed, what was done before it, and where the rest is, for the operator."""
        done = self.outcome
        return (
            f"the broker failed part-way ({self}): {done.count} messages were {done.verb} "
            f"(recorded in the audit log); the rest are still in {done.queue.dlq}"
        )
