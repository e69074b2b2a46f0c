"""The event log (`{ns}.orders.log`): recent events, an order's events, and a backfill.

The page lists with `operations.events.listing.list_events` and the form backfills with
`operations.events.operations.backfill_recorded`, as `checkout events list|backfill`
do: a backfill from the console is written to the same audit log, with the signed-in
key's name as the actor. Times are what the command takes: RFC 3339, or a duration ago.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aio_pika.exceptions import AMQPError
from starlette.requests import Request
from starlette.responses import Response

from operations.console.guard import action, signed_in
from operations.console.sessions import Session
from operations.console.web import (
    Form,
    Refusal,
    context,
    message_view,
    page,
    problem,
    read_rate,
    read_reason,
)
from operations.dlq.errors import AuditUnavailable
from operations.events.errors import (
    BackfillNotRecorded,
    BackfillStopped,
    BadTarget,
    LogLost,
    LogNotDeclared,
    QueueMissing,
)
from operations.events.event import LoggedEvent
from operations.events.listing import list_events
from operations.events.operations import backfill_recorded
from operations.events.selection import EventSelection
from operations.events.targets import not_for_events
from operations.events.times import BadTime, parse_time

SHOWN = 200  # the newest events of a listing shown (the count says how many matched)
RECENT = "1h"  # the page's range when nothing is asked
_SPLIT = re.compile(r"[\s,]+")


def _selection(
    since: str, until: str, types: str, order: str, now: datetime, since_offset: str = ""
) -> EventSelection:
    """The events asked for, as `checkout events` reads its options."""
    try:
        start = parse_time(since, now) if since else None
        end = parse_time(until, now) if until else None
    except BadTime as exc:
        raise Refusal(str(exc)) from None
    offset = None
    if since_offset.strip():
        try:
            offset = int(since_offset)
        except ValueError:
            raise Refusal("the offset to resume from is a whole number") from None
    try:
        return EventSelection(
            since=start,
            until=end,
            types=tuple(t for t in _SPLIT.split(types) if t),
            order_id=order or None,
            since_offset=offset,
        )
    except ValueError as exc:
        said = str(exc).replace("--since-offset", "the offset to resume from")
        raise Refusal(said.replace("--until", "until").replace("--since", "since")) from None


def _shown(event: LoggedEvent) -> dict[str, Any]:
    return {"event": event, **message_view(event.headers, event.body)}


@signed_in
async def events(request: Request, session: Session) -> Response:
    ctx = context(request)
    params = request.query_params
    asked = {
        "since": params.get("since", "" if params else RECENT).strip()[:60],
        "until": params.get("until", "").strip()[:60],
        "types": params.get("types", "").strip()[:200],
        "order": params.get("order", "").strip()[:60],
    }
    values: dict[str, Any] = {"asked": asked, "stream": ctx.topology.event_log, "shown": SHOWN}
    now = datetime.now(UTC)
    try:
        selection = _selection(asked["since"], asked["until"], asked["types"], asked["order"], now)
    except Refusal as exc:
        return page(request, "events.html", session, {**values, "error": str(exc)}, status=400)
    connection = ctx.broker.connection
    if connection is None:
        why = "RabbitMQ is not connected: the event log cannot be read"
        return page(request, "events.html", session, {**values, "error": why}, status=503)
    try:
        listing = await list_events(connection, ctx.topology.event_log, selection, started=now)
    except LogNotDeclared as exc:
        why = f"{exc}: start the system once (or run `checkout declare`)"
        return page(request, "events.html", session, {**values, "error": why}, status=502)
    except (LogLost, AMQPError, OSError) as exc:
        why = f"reading the event log failed ({exc!s:.160})"
        return page(request, "events.html", session, {**values, "error": why}, status=502)
    newest = listing.events[-SHOWN:][::-1]
    return page(
        request,
        "events.html",
        session,
        {
            **values,
            "matched": len(listing.events),
            "scanned": listing.scanned,
            "end": listing.window.end,
            "events": [_shown(e) for e in newest],
        },
    )


@action
async def backfill(request: Request, session: Session, form: Form) -> Response:
    ctx = context(request)
    dry_run = form.get("dry_run") == "1"
    now = datetime.now(UTC)
    queue = form.get("to_queue").strip()
    try:
        if not queue:
            raise Refusal("name the queue to copy into (it must exist)")
        refused = not_for_events(ctx.topology, queue)
        if refused:
            raise Refusal(refused)
        if not form.get("since").strip():
            raise Refusal("say where to start: since is required")
        reason = read_reason(form)
        rate = read_rate(form.get("rate"), "events")
        selection = _selection(
            form.get("since").strip(),
            form.get("until").strip(),
            form.get("types"),
            "",
            now,
            form.get("since_offset"),
        )
    except Refusal as exc:
        return _problem(request, session, str(exc), status=400)
    connection = ctx.broker.connection
    if connection is None:
        return _problem(request, session, "RabbitMQ is not connected: try again shortly", 503)
    try:
        outcome = await backfill_recorded(
            connection,
            ctx.uow,
            ctx.topology.event_log,
            queue,
            selection,
            actor=session.key_name,
            reason=reason,
            rate=rate,
            dry_run=dry_run,
        )
    except (QueueMissing, BadTarget) as exc:
        return _problem(request, session, str(exc), status=400)
    except LogNotDeclared as exc:
        return _problem(request, session, f"{exc}: start the system once")
    except AuditUnavailable as exc:
        return _problem(request, session, f"the audit log cannot be written, nothing copied: {exc}")
    except BackfillStopped as exc:
        return _problem(request, session, stopped_line(exc))
    except BackfillNotRecorded as exc:
        return _problem(
            request,
            session,
            f"{exc.outcome.count} events were copied to {exc.outcome.queue}, but the audit log"
            f" was not written: {exc}",
        )
    except (LogLost, AMQPError, OSError) as exc:
        return _problem(request, session, f"the broker failed ({exc!s:.160})")
    return page(request, "backfilled.html", session, {"outcome": outcome})


def stopped_line(exc: BackfillStopped) -> str:
    """How far a backfill got before it stopped, and the form's values that go on from there."""
    done = exc.outcome
    go_on = f"until {done.window.end.isoformat()}"
    if done.resume_from is not None:
        go_on += f" and from offset {done.resume_from}"
    return (
        f"the backfill stopped ({exc}): {done.count} events were copied to {done.queue}"
        f" (recorded in the audit log); to go on, backfill again with the same range, {go_on}"
    )


def _problem(request: Request, session: Session, why: str, status: int = 502) -> Response:
    return problem(request, session, why, status=status, back=("/events", "the event log"))
