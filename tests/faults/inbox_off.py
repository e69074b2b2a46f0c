"""Run a part with its inbox switched off: `python -m tests.faults.inbox_off consumer email`.

The same command line as `python -m infra.cli`, but the inbox's claim always claims (an
upsert that returns its row even when the message was applied before) and its check
never has seen anything, so every delivery of a message is applied. The consumers
compose their statements from `infra.messaging.inbox` when they first need them, so
replacing the fragments here, before any message arrives, is enough. Product code has
no such switch (nor should it); the checker must notice the result.
"""

from __future__ import annotations

from infra.messaging import inbox

inbox.CLAIM = (
    "INSERT INTO inbox (consumer, message_id, received_at) {rows}"
    " ON CONFLICT (consumer, message_id) DO UPDATE SET received_at = EXCLUDED.received_at"
    " RETURNING message_id"
)
inbox.SEEN = "(%s::varchar IS NULL AND %s::uuid IS NULL)"  # never true; the same parameters

if __name__ == "__main__":
    from infra.cli.main import app

    app(prog_name="checkout")
