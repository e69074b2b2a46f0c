"""How a failed message is classified, and the headers a dead-lettered one carries.

```
Exception
├── PermanentFailure   retrying cannot help: bad payload, a 4xx other than 408/429
│                       -> the dead-letter queue at once
└── TransientFailure   may work later: timeouts, 5xx, 408, 429, lost connections
                        -> retried with growing delays, then the dead-letter queue
```
Any other exception raised by a handler (a bug, a lost database connection) counts
as transient: it is retried, and dead-lettered with its type and message if it keeps
failing, so nothing is dropped and nothing blocks the queue.
"""

from __future__ import annotations

# Headers on a message that has failed (set on retries and on dead-lettering).
ORIGINAL_QUEUE = "x-original-queue"
ATTEMPTS = "x-attempts"
FIRST_FAILURE_AT = "x-first-failure-at"
LAST_FAILURE_AT = "x-last-failure-at"
ERROR_TYPE = "x-error-type"
ERROR_MESSAGE = "x-error-message"
FAILURE_KIND = "x-failure-kind"  # "permanent" | "transient"

ERROR_MESSAGE_LIMIT = 1000

# What RabbitMQ adds when it dead-letters or redelivers a message itself. A copy
# (retry, dead letter, replay) does not carry them: they describe the delivery that
# failed, not the message, and x-death grows with every round trip.
BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)


class PermanentFailure(Exception):
    """The message can never be processed as it is: dead-letter it at once."""


class TransientFailure(Exception):
    """The message may be processed later: retry it with backoff."""


def is_transient_status(status_code: int) -> bool:
    """5xx, 408 and 429 are worth retrying; every other 4xx is not."""
    return status_code >= 500 or status_code in (408, 429)
