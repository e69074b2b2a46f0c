"""The overview: sagas by state, stuck work, outbox backlog, queues and dead letters."""

from __future__ import annotations

from dataclasses import replace
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
        counts = await saga_counts(ctx.uow.engine)
        found = replace(
            found,
            sagas=counts.sagas,
            refunds=counts.refunds,
            outbox_rows=counts.outbox_rows,
            outbox_oldest_age=counts.outbox_oldest_age,
        )
    except (psycopg.Error, DBAPIError, OSError) as exc:
        found = replace(found, database_error=f"database unreachable ({exc!r:.120})")
    connection = ctx.broker.connection
    if connection is None:
        found = replace(
            found, broker_error="RabbitMQ is not connected: queues and dead letters are unknown"
        )
    else:
        try:
            found = replace(found, queues=await queue_status(connection, ctx.topology))
        except (AMQPError, OSError) as exc:
            found = replace(found, broker_error=f"reading the queues failed ({exc!r:.120})")
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
