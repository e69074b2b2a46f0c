"""The stuck report as `checkout stuck` prints it and the console's stuck page shows it.

One function for both, so the page and the command list the same items with the same
reasons: the database first (`find_stuck`), then, only when something is stuck, the
dead-letter queues (read, not consumed) and the saga process's open breakers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta

from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.cli.supervisor import known_health_ports
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.stuck import (
    Report,
    attach_breakers,
    attach_dead_letters,
    find_stuck,
    finish,
    open_breakers,
)

# Given whether the queues are wanted, a broker connection or (None, why not).
BrokerOpener = Callable[
    [bool], AbstractAsyncContextManager[tuple[AbstractConnection | None, str | None]]
]


def saga_metrics_url(settings: Settings) -> str | None:
    """The saga process's metrics endpoint, where its breakers show (None: not known)."""
    port = known_health_ports(settings).get("saga")
    return f"http://{settings.health_host}:{port}/metrics" if port else None


async def stuck_report(
    engine: AsyncEngine,
    older_than: timedelta,
    broker: BrokerOpener,
    topology: Topology,
    metrics_url: str | None,
) -> Report:
    """Everything not final for longer than `older_than`, with what it waits for."""
    async with engine.connect() as conn:
        now = (await conn.execute(text("SELECT now()"))).scalar_one()
        found = await find_stuck(conn, now, older_than)
    report = Report(now, older_than, found)
    async with broker(bool(found)) as (rabbit, error):
        if rabbit is not None:
            # A broker lost while its queues are read costs the report its dead
            # letters, not the rest of what the database said.
            try:
                await attach_dead_letters(found, rabbit, topology)
                report.dead_letters_read = True
            except (AMQPError, OSError, RuntimeError) as exc:  # RuntimeError: closed
                error = f"reading the dead-letter queues failed ({exc!r:.160})"
        report.broker_error = error
    if found and metrics_url:
        open_ = await open_breakers(metrics_url)
        if open_:
            attach_breakers(found, open_, metrics_url)
    finish(found)
    return report
