"""Decorators that put every console route behind a session (and every action behind CSRF)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

import psycopg
import structlog
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response

from operations.console.sessions import Session
from operations.console.web import Form, cross_site, csrf_ok, current_session, page, read_form
from operations.console.web import to_sign_in as _to_sign_in

log = structlog.get_logger("operations.console")

View = Callable[[Request, Session], Awaitable[Response]]
Action = Callable[[Request, Session, Form], Awaitable[Response]]


# What a database that cannot be reached raises, through psycopg or SQLAlchemy.
DATABASE_DOWN = (psycopg.Error, DBAPIError, OSError)


def database_down(request: Request, exc: BaseException) -> Response:
    """The console cannot check who is signed in: say so, do nothing (503)."""
    log.warning("console: database unreachable", path=request.url.path, error=repr(exc))
    return page(
        request,
        "problem.html",
        None,
        {"why": "the database is unreachable, so nobody can be signed in: retry shortly"},
        status=503,
    )


def refused(request: Request, session: Session | None, why: str) -> Response:
    log.warning("console request refused", path=request.url.path, reason=why)
    return page(request, "refused.html", session, {"why": why}, status=403)


async def _session_or_answer(request: Request) -> Session | Response:
    """The operator's session; else the answer instead of the page: the sign-in page, or
    503 when the database cannot tell who is signed in."""
    try:
        session = await current_session(request)
    except DATABASE_DOWN as exc:
        return database_down(request, exc)
    if session is None:
        return _to_sign_in(request)
    return session


def signed_in(view: View) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in operator; anyone else goes to the sign-in page."""

    @wraps(view)
    async def guarded(request: Request) -> Response:
        session = await _session_or_answer(request)
        if isinstance(session, Response):
            return session
        with structlog.contextvars.bound_contextvars(api_key=session.key_name):
            return await view(request, session)

    return guarded


def action(handler: Action) -> Callable[[Request], Awaitable[Response]]:
    """A form post of a signed-in operator, from the console itself (CSRF token, origin)."""

    @wraps(handler)
    async def guarded(request: Request) -> Response:
        if cross_site(request):
            return refused(request, None, "a form posted from another site is not accepted")
        session = await _session_or_answer(request)
        if isinstance(session, Response):
            return session
        form = await read_form(request)
        if not csrf_ok(session, form):
            return refused(
                request,
                session,
                "the form's token is missing or does not match your session: reload the page",
            )
        with structlog.contextvars.bound_contextvars(api_key=session.key_name):
            return await handler(request, session, form)

    return guarded
