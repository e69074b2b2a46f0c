"""Sign in with an operator API key (form field `api_key`), sign out."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from operations.console.guard import DATABASE_DOWN, action, database_down, refused
from operations.console.sessions import COOKIE, Session, SignInRefused, end_session, open_session
from operations.console.web import (
    PREFIX,
    Form,
    context,
    cross_site,
    current_session,
    forget_cookie,
    page,
    read_form,
    set_cookie,
)

log = structlog.get_logger("operations.console")


async def sign_in_page(request: Request) -> Response:
    try:
        if await current_session(request) is not None:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
    except DATABASE_DOWN as exc:
        return database_down(request, exc)
    return page(request, "sign_in.html", None)


async def sign_in(request: Request) -> Response:
    if cross_site(request):
        return refused(request, None, "a form posted from another site is not accepted")
    form = await read_form(request)
    try:
        opened = await open_session(context(request).uow, form.get("api_key"))
    except DATABASE_DOWN as exc:
        return database_down(request, exc)
    except SignInRefused as exc:
        log.info("console sign-in refused", reason=str(exc))
        return page(request, "sign_in.html", None, {"error": str(exc)}, status=401)
    log.info("console sign-in", api_key=opened.session.key_name)
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    set_cookie(request, response, opened.token)
    return response


@action
async def sign_out(request: Request, session: Session, form: Form) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        await end_session(context(request).uow, token)
    log.info("console sign-out", api_key=session.key_name)
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    forget_cookie(response)
    return response
