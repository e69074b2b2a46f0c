"""Run a part with its inbox switched off: `python -m tests.faults.inbox_off consumer email`.

The same command line as `python -m infra.cli`, but `infra.messaging.inbox.claim` always
claims and `seen` never has seen anything, so every delivery of a message is applied.
Product code has no such switch (nor should it); the checker must notice the result.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from infra.messaging import inbox


async def _always_claim(
    conn: psycopg.AsyncConnection[Any], consumer: str, message_id: uuid.UUID
) -> bool:
    return True


async def _never_seen(
    conn: psycopg.AsyncConnection[Any], consumer: str, message_id: uuid.UUID
) -> bool:
    return False


inbox.claim = _always_claim
inbox.seen = _never_seen

if __name__ == "__main__":
    from infra.cli.main import app

    app(prog_name="checkout")
