"""Stuck work: the list `checkout stuck` prints, with each item's repair.

The list comes from `operations.stuck.stuck_report`, the function the command
calls. A dead letter's repair is a replay form that posts to the dead-letters page's
replay (the same replay, audited the same way); any other repair is a link to the
order's page or the dead-letter queue, with the command the CLI would print.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aio_pika.abc import AbstractConnection
from starlette.requests import Request
from starlette.responses import Response

from operations.console.guard import signed_in
from operations.console.sessions import Session
from operations.console.web import BrokerSource, context, page
from operations.stuck import (
    DEFAULT_OLDER_THAN,
    BrokerOpener,
    parse_duration,
    saga_metrics_url,
    stuck_report,
)

DEFAULT_FILTER = f"{int(DEFAULT_OLDER_THAN.total_seconds() // 60)}m"


def _ours(broker: BrokerSource) -> BrokerOpener:
    """The API's own broker connection (never closed here), or why there is none."""

    @asynccontextmanager
    async def opened(wanted: bool) -> AsyncIterator[tuple[AbstractConnection | None, str | None]]:
        connection = broker.connection if wanted else None
        error = "RabbitMQ is not connected" if wanted and connection is None else None
        yield connection, error

    return opened


@signed_in
async def stuck(request: Request, session: Session) -> Response:
    ctx = context(request)
    asked = request.query_params.get("older_than", DEFAULT_FILTER).strip()[:20]
    try:
        older_than = parse_duration(asked)
    except ValueError as exc:
        return page(
            request,
            "stuck.html",
            session,
            {"older_than": asked, "error": str(exc), "report": None},
            status=400,
        )
    report = await stuck_report(
        ctx.uow.engine,
        older_than,
        _ours(ctx.broker),
        ctx.topology,
        saga_metrics_url(ctx.settings),
    )
    return page(request, "stuck.html", session, {"older_than": asked, "report": report})
