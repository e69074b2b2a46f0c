"""API keys: every key, a new one (its token shown once), revoking one."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response

from infra.auth.keys import ApiKeyError, Role, create_key, list_keys, revoke_key, valid_name
from operations.console.guard import action, signed_in
from operations.console.sessions import Session
from operations.console.web import Form, context, page

log = structlog.get_logger("operations.console")


@signed_in
async def keys(request: Request, session: Session) -> Response:
    return await _keys_page(request, session)


async def _keys_page(
    request: Request, session: Session, *, status: int = 200, **values: object
) -> Response:
    found = await list_keys(context(request).uow.engine, include_revoked=True)
    return page(request, "keys.html", session, {"keys": found, **values}, status=status)


@action
async def create(request: Request, session: Session, form: Form) -> Response:
    name = form.get("name").strip()
    try:
        role = Role(form.get("role"))
    except ValueError:
        return await _keys_page(request, session, status=400, error="choose clerk or operator")
    if not valid_name(name):
        return await _keys_page(
            request,
            session,
            status=400,
            error="a name is 1-64 letters, digits and . _ @ -, starting with a letter or digit",
        )
    try:
        new = await create_key(context(request).uow.engine, name, role)
    except ApiKeyError as exc:
        return await _keys_page(request, session, status=409, error=str(exc))
    log.info("api key created", name=name, role=role.value, by=session.key_name)
    return await _keys_page(request, session, status=201, created=new)


@action
async def revoke(request: Request, session: Session, form: Form) -> Response:
    key_id = request.path_params["key_id"]
    try:
        revoked = await revoke_key(context(request).uow.engine, str(key_id))
    except ApiKeyError as exc:
        return await _keys_page(request, session, status=404, error=str(exc))
    log.info("api key revoked", name=revoked.name, by=session.key_name)
    return await _keys_page(request, session, revoked=revoked)
