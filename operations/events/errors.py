"""What can go wrong with the event log.

```
EventLogError
├── LogNotDeclared    the stream does not exist: the topology was never declared
├── QueueMissing      the backfill's target queue does not exist (it is never created)
├── BadTarget         the target is the log itself
├── LogLost           the broker went away while the log was being read (listing)
├── BackfillStopped   a backfill stopped part-way (broker lost, or Ctrl-C); `outcome`
│                     says how far it got and where to resume
└── BackfillNotRecorded  events were copied but the audit log could not be written
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from operations.events.backfill import BackfillOutcome


class EventLogError(Exception):
    """Base of the event log's errors."""


class LogNotDeclared(EventLogError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"the event log {name!r} does not exist on the broker")


class QueueMissing(EventLogError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"queue {name!r} does not exist: a backfill copies into an existing queue only "
            "(declare and bind it first, then backfill)"
        )


class BadTarget(EventLogError):
    """The queue named cannot receive a backfill."""


class LogLost(EventLogError):
    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"the broker went away while reading the event log: {cause!r}")


class BackfillStopped(EventLogError):
    """The backfill did not reach its end; `outcome` holds what it copied before."""

    def __init__(self, outcome: BackfillOutcome, cause: BaseException | str) -> None:
        self.outcome = outcome
        self.cause = cause
        super().__init__(
            str(cause) if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        )


class BackfillNotRecorded(EventLogError):
    """The backfill copied `outcome` but its audit entry failed; `cause` is the database's.

    `stopped` is set when the backfill had also stopped part-way.
    """

    def __init__(
        self,
        outcome: BackfillOutcome,
        cause: BaseException,
        stopped: BackfillStopped | None = None,
    ) -> None:
        self.outcome = outcome
        self.cause = cause
        self.stopped = stopped
        super().__init__(str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause))
