"""The overview: sagas by state, stuck work, outbox backlog, queues and dead letters."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from aio_pika.exceptions import AMQPError
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response

from operations.console.guard import signed_in
from operations.console.sessions import Session
from operations.console.web import context, page
from operations.overview import STUCK_AFTER, Overview, queue_status, saga_counts

REFRESH_SECONDS = 5


@signed_in
async def overview(request: Request, session: Session) -> Response:
    ctx = context(request)
    found = Overview(generated_at=datetime.now(UTC))
    try:
        sagas, rows, oldest = await saga_counts(ctx.uow)
        found = Overview(found.generated_at, sagas, rows, oldest)
    except (psycopg.Error, DBAPIError, OSError) as exc:
        found = Overview(found.generated_at, database_error=f"database unreachable ({exc!r:.120})")
    connection = ctx.broker.connection
    if connection is None:
        broker_error = "RabbitMQ is not connected: queues and dead letters are unknown"
        queues = []
    else:
        try:
            queues, broker_error = await queue_status(connection, ctx.topology), None
        except (AMQPError, OSError) as exc:
            queues, broker_error = [], f"reading the queues failed ({exc!r:.120})"
    found = Overview(
        found.generated_at,
        found.sagas,
        found.outbox_rows,
        found.outbox_oldest_age,
        queues,
        found.database_error,
        broker_error,
    )
    return page(
        request,
        "overview.html",
        session,
        {
            "overview": found,
            "refresh": REFRESH_SECONDS,
            "stuck_minutes": int(STUCK_AFTER.total_seconds() // 60),
        },
    )
