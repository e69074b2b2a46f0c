"""Dead letters: every queue's depth; a queue's messages; replay and purge.

Replay and purge call `operations.dlq.operations` as `checkout dlq` does, so a replay
from the console is the same replay, written to the same audit log, with the
signed-in key's name as the actor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable
from typing import Any

from aio_pika.exceptions import AMQPError
from starlette.requests import Request
from starlette.responses import Response

from infra.messaging import failures
from infra.messaging.topology import ConsumedQueue
from operations.console.guard import action, signed_in
from operations.console.sessions import Session
from operations.console.web import Form, context, page
from operations.dlq import inspect
from operations.dlq.errors import AuditUnavailable, Interrupted, QueueNotDeclared, UnknownQueue
from operations.dlq.letters import DeadLetter, jsonable
from operations.dlq.operations import purge_recorded, replay_recorded
from operations.dlq.outcome import Outcome
from operations.dlq.queues import resolve
from operations.dlq.selection import Selection
from operations.timefmt import when

SHOWN = 50  # messages shown on a queue's page (the depth says how many there are)
MAX_REASON = 500


class _Refusal(Exception):
    """What the operator asked cannot be done; the message says what to change."""


@signed_in
async def queues(request: Request, session: Session) -> Response:
    ctx = context(request)
    connection = ctx.broker.connection
    if connection is None:
        return _broker_down(request, session)
    try:
        depths = await inspect.depths(connection, ctx.topology)
    except QueueNotDeclared as exc:
        return _problem(request, session, f"{exc} is not declared: start the system once")
    except (AMQPError, OSError) as exc:
        return _problem(request, session, f"reading the queues failed ({exc!r:.120})")
    return page(request, "dead_letters.html", session, {"depths": depths})


@signed_in
async def queue_page(request: Request, session: Session) -> Response:
    ctx = context(request)
    try:
        target = resolve(ctx.topology, request.path_params["queue"])
    except UnknownQueue as exc:
        return page(request, "not_found.html", session, {"what": str(exc)}, status=404)
    connection = ctx.broker.connection
    if connection is None:
        return _broker_down(request, session)
    try:
        peeked = await inspect.peek(connection, target, SHOWN)
    except QueueNotDeclared as exc:
        return _problem(request, session, f"{exc} is not declared: start the system once")
    except (AMQPError, OSError) as exc:
        return _problem(request, session, f"reading {target.dlq} failed ({exc!r:.120})")
    return page(
        request,
        "dead_letter_queue.html",
        session,
        {"queue": target, "depth": peeked.depth, "letters": [_shown(x) for x in peeked.letters]},
    )


def _shown(letter: DeadLetter) -> dict[str, Any]:
    body = letter.parsed_body()
    return {
        "letter": letter,
        "first_failure": when(letter.headers.get(failures.FIRST_FAILURE_AT)),
        "last_failure": when(letter.headers.get(failures.LAST_FAILURE_AT)),
        "headers": json.dumps(jsonable(dict(letter.headers)), indent=2, sort_keys=True),
        "body": body if isinstance(body, str) else json.dumps(body, indent=2),
    }


@action
async def replay(request: Request, session: Session, form: Form) -> Response:
    dry_run = form.get("dry_run") == "1"
    try:
        target, selection, reason = _asked(request, form)
        rate = _rate(form.get("rate"))
    except _Refusal as exc:
        return _problem(request, session, str(exc), status=400)
    ctx = context(request)
    connection = ctx.broker.connection
    if connection is None:
        return _broker_down(request, session)
    return await _done(
        request,
        session,
        replay_recorded(
            connection,
            ctx.uow,
            target,
            selection,
            actor=session.key_name,
            reason=reason,
            rate=rate,
            dry_run=dry_run,
        ),
        # The stuck page's replay buttons post here too: its outcome links back there.
        back="stuck" if form.get("back") == "stuck" else None,
    )


@action
async def purge(request: Request, session: Session, form: Form) -> Response:
    try:
        target, selection, reason = _asked(request, form)
    except _Refusal as exc:
        return _problem(request, session, str(exc), status=400)
    if form.get("confirm") != "yes":
        return _problem(
            request,
            session,
            f"purging drops messages from {target.dlq} for good: tick the confirmation",
            status=400,
        )
    ctx = context(request)
    connection = ctx.broker.connection
    if connection is None:
        return _broker_down(request, session)
    return await _done(
        request,
        session,
        purge_recorded(
            connection, ctx.uow, target, selection, actor=session.key_name, reason=reason
        ),
    )


def _asked(request: Request, form: Form) -> tuple[ConsumedQueue, Selection, str]:
    """The queue, the messages and the reason of a replay or purge form."""
    try:
        target = resolve(context(request).topology, request.path_params["queue"])
    except UnknownQueue as exc:
        raise _Refusal(str(exc)) from None
    reason = " ".join(form.get("reason").split())
    if not reason:
        raise _Refusal("say why: the reason is required, and kept in the audit log")
    if len(reason) > MAX_REASON:
        raise _Refusal(f"the reason is longer than {MAX_REASON} characters")
    if form.get("scope") == "all":
        return target, Selection.every(), reason
    try:
        return target, Selection.of(form.all("message_id")), reason
    except ValueError:
        raise _Refusal("select at least one message, or choose every message") from None


def _rate(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        rate = float(text)
    except ValueError:
        raise _Refusal("the rate is a number of messages a second") from None
    if not math.isfinite(rate) or rate <= 0:
        raise _Refusal("the rate must be a positive number of messages a second")
    return rate


async def _done(
    request: Request,
    session: Session,
    operation: Awaitable[Outcome],
    *,
    back: str | None = None,
) -> Response:
    try:
        outcome = await operation
    except QueueNotDeclared as exc:
        return _problem(request, session, f"{exc} is not declared: start the system once")
    except AuditUnavailable as exc:
        moved = exc.already_moved()
        said = f"{moved}: {exc}" if moved else f"the audit log cannot be written: {exc}"
        return _problem(request, session, said)
    except Interrupted as exc:
        return _problem(request, session, exc.describe())
    except (AMQPError, OSError) as exc:
        return _problem(request, session, f"the broker failed ({exc!r:.120})")
    return page(request, "outcome.html", session, {"outcome": outcome, "back": back})


def _broker_down(request: Request, session: Session) -> Response:
    return _problem(request, session, "RabbitMQ is not connected: try again shortly", status=503)


def _problem(request: Request, session: Session, why: str, *, status: int = 502) -> Response:
    return page(request, "problem.html", session, {"why": why}, status=status)
