"""The inbox: de-duplication by message_id, written in the same transaction as the effect.

Like a tracking record in an event-sourced process application: a consumer claims
`(consumer, message_id)` as it applies a message; if the row already exists, the
message was applied before (a redelivery or a duplicate publish) and nothing is
applied. A concurrent duplicate's claim waits on the first one's row until that
transaction ends, then finds it (skips) or, if the first rolled back, claims it.

The claim runs once per message on the hot path, inside the statement that applies the
message (the saga's load, a consumer's effect), so this module holds SQL fragments
rather than functions: the callers compose them into their own statements.
"""

from __future__ import annotations

CLAIM = (
    "INSERT INTO inbox (consumer, message_id, received_at) {rows}"
    " ON CONFLICT DO NOTHING RETURNING message_id"
)
"""The claim, as a data-modifying CTE. `{rows}` gives (consumer, message_id, received_at):
`VALUES (%s, %s, %s)`, or a SELECT that yields the row only when the message should be
applied. It returns the message id if this statement claimed it, no row otherwise."""

SEEN = "EXISTS (SELECT 1 FROM inbox WHERE consumer = %s AND message_id = %s)"
"""Whether (consumer, message_id) was applied already: a cheap check before a remote call."""
