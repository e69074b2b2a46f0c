"""Dead letters: every queue's depth; a queue's messages; replay and purge.

Replay and purge call `operations.dlq.operations` as `checkout dlq` does, so a replay
from the console is the same replay, written to the same audit log, with the
signed-in key's name as the actor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError
from starlette.requests import Request
from starlette.responses import Response

from infra.db.session import UnitOfWork
from infra.messaging import failures
from infra.messaging.topology import ConsumedQueue
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
from operations.dlq import inspect
from operations.dlq.errors import AuditUnavailable, Interrupted, QueueNotDeclared, UnknownQueue
from operations.dlq.letters import DeadLetter
from operations.dlq.operations import purge_recorded, replay_recorded
from operations.dlq.outcome import Outcome
from operations.dlq.queues import resolve
from operations.dlq.selection import Selection
from operations.timefmt import when

SHOWN = 50  # messages shown on a queue's page (the depth says how many there are)


@signed_in
async def queues(request: Request, session: Session) -> Response:
    ctx = context(request)
    connection = ctx.broker.connection
    if connection is None:
        return _broker_down(request, session)
    try:
        depths = await inspect.depths(connection, ctx.topology)
    except QueueNotDeclared as exc:
        return problem(request, session, f"{exc} is not declared: start the system once")
    except (AMQPError, OSError) as exc:
        return problem(request, session, f"reading the queues failed ({exc!r:.120})")
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
        return problem(request, session, f"{exc} is not declared: start the system once")
    except (AMQPError, OSError) as exc:
        return problem(request, session, f"reading {target.dlq} failed ({exc!r:.120})")
    return page(
        request,
        "dead_letter_queue.html",
        session,
        {"queue": target, "depth": peeked.depth, "letters": [_shown(x) for x in peeked.letters]},
    )


def _shown(letter: DeadLetter) -> dict[str, Any]:
    return {
        "letter": letter,
        "first_failure": when(letter.headers.get(failures.FIRST_FAILURE_AT)),
        "last_failure": when(letter.headers.get(failures.LAST_FAILURE_AT)),
        **message_view(letter.headers, letter.body),
    }


@action
async def replay(request: Request, session: Session, form: Form) -> Response:
    dry_run = form.get("dry_run") == "1"
    target = _target(request, session)
    if isinstance(target, Response):
        return target
    try:
        selection, reason = _asked(form)
        rate = read_rate(form.get("rate"), "messages")
    except Refusal as exc:
        return problem(request, session, str(exc), status=400, back=_back_to(target))
    return await _done(
        request,
        session,
        target,
        lambda connection, uow: replay_recorded(
            connection,
            uow,
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
    target = _target(request, session)
    if isinstance(target, Response):
        return target
    try:
        selection, reason = _asked(form)
    except Refusal as exc:
        return problem(request, session, str(exc), status=400, back=_back_to(target))
    if form.get("confirm") != "yes":
        return problem(
            request,
            session,
            f"purging drops messages from {target.dlq} for good: tick the confirmation",
            status=400,
            back=_back_to(target),
        )
    return await _done(
        request,
        session,
        target,
        lambda connection, uow: purge_recorded(
            connection, uow, target, selection, actor=session.key_name, reason=reason
        ),
    )


def _target(request: Request, session: Session) -> ConsumedQueue | Response:
    """The queue named in the path, or the page refusing a replay or purge of a queue that
    does not exist (which links the list of queues)."""
    try:
        return resolve(context(request).topology, request.path_params["queue"])
    except UnknownQueue as exc:
        return problem(request, session, str(exc), status=400)


def _asked(form: Form) -> tuple[Selection, str]:
    """The messages and the reason of a replay or purge form."""
    reason = read_reason(form)
    if form.get("scope") == "all":
        return Selection.every(), reason
    try:
        return Selection.of(form.all("message_id")), reason
    except ValueError:
        raise Refusal("select at least one message, or choose every message") from None


async def _done(
    request: Request,
    session: Session,
    target: ConsumedQueue,
    operation: Callable[[AbstractConnection, UnitOfWork], Awaitable[Outcome]],
    *,
    back: str | None = None,
) -> Response:
    """Run a replay or purge on the console's broker connection and show its outcome; a
    page that says what was not done links back to `target`'s dead letters."""
    ctx = context(request)
    connection = ctx.broker.connection
    to_queue = _back_to(target)
    if connection is None:
        return _broker_down(request, session, to_queue)
    try:
        outcome = await operation(connection, ctx.uow)
    except QueueNotDeclared as exc:
        return problem(
            request, session, f"{exc} is not declared: start the system once", back=to_queue
        )
    except AuditUnavailable as exc:
        moved = exc.already_moved()
        said = f"{moved}: {exc}" if moved else f"the audit log cannot be written: {exc}"
        return problem(request, session, said, back=to_queue)
    except Interrupted as exc:
        return problem(request, session, exc.describe(), back=to_queue)
    except (AMQPError, OSError) as exc:
        return problem(request, session, f"the broker failed ({exc!r:.120})", back=to_queue)
    return page(request, "outcome.html", session, {"outcome": outcome, "back": back})


def _back_to(target: ConsumedQueue) -> tuple[str, str]:
    """The link back to `target`'s dead letters, for a page that says what was not done."""
    return f"/dead-letters/{target.name}", target.dlq


def _broker_down(
    request: Request, session: Session, back: tuple[str, str] | None = None
) -> Response:
    return problem(
        request, session, "RabbitMQ is not connected: try again shortly", status=503, back=back
    )
