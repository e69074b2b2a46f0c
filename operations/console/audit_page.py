"""The audit log of replays, purges and backfills, from the console and the CLI alike."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from operations.console.guard import signed_in
from operations.console.sessions import Session
from operations.console.web import context, page
from operations.dlq import audit

SHOWN = 200


@signed_in
async def audit_log(request: Request, session: Session) -> Response:
    records = await audit.history(context(request).uow, SHOWN)
    return page(request, "audit.html", session, {"records": records, "shown": SHOWN})
