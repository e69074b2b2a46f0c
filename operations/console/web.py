"""What every console page shares: the request's context, forms, sessions, CSRF, templates.

Cross-site requests are refused three ways, each enough alone for a current browser:
the session cookie is `SameSite=Strict` (a form posted from another site arrives
without it); every form carries the session's CSRF token, compared on every POST;
and a POST whose `Origin` (or `Sec-Fetch-Site`) names another site is refused before
anything else, which also covers the sign-in form (no session yet).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from aio_pika.abc import AbstractConnection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from infra.db.session import UnitOfWork
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.console.sessions import COOKIE, LIFETIME, Session, find_session, same_token
from operations.dlq.letters import jsonable, parsed_body
from operations.timeline.merge import format_ms

HERE = Path(__file__).parent
PREFIX = "/console"
CSRF_FIELD = "csrf_token"
MAX_REASON = 500  # characters of a replay's, purge's or backfill's reason

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["ms"] = format_ms


class BrokerSource(Protocol):
    """The API's broker link (`checkout_api.broker.BrokerLink`): a connection when up."""

    @property
    def connection(self) -> AbstractConnection | None: ...


@dataclass(frozen=True)
class Context:
    """What the API's lifespan built, as the console uses it."""

    settings: Settings
    uow: UnitOfWork
    broker: BrokerSource

    @property
    def topology(self) -> Topology:
        return Topology.from_settings(self.settings)


def context(request: Request) -> Context:
    # The server copies the API lifespan's state (`checkout_api.state.ApiState`) into
    # every request's scope, mounted apps included.
    state = request.scope["state"]
    return Context(state["settings"], state["uow"], state["broker"])


class Form:
    """An `application/x-www-form-urlencoded` body: one value, or every value, of a name."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.pairs:
            if key == name:
                return value
        return default

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


async def read_form(request: Request) -> Form:
    """The posted form (the API's body limit bounds its size)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return Form(parse_qsl(body, keep_blank_values=True))


def cross_site(request: Request) -> bool:
    """True when the browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"  # an opaque origin (sandboxed frame, file:) is not ours
    return urlsplit(origin).netloc != request.headers.get("host", "")


async def current_session(request: Request) -> Session | None:
    return await find_session(context(request).uow, request.cookies.get(COOKIE))


def to_sign_in(request: Request) -> RedirectResponse:
    """Back to the sign-in page, forgetting a cookie that no longer opens anything."""
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    if COOKIE in request.cookies:
        forget_cookie(response)
    return response


def set_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(LIFETIME.total_seconds()),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        # Plain HTTP on 127.0.0.1 by default; behind TLS (the scheme a proxy reports to
        # uvicorn), the cookie is never sent over plain HTTP.
        secure=request.url.scheme == "https",
    )


def forget_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")


def csrf_ok(session: Session, form: Form) -> bool:
    return same_token(form.get(CSRF_FIELD) or None, session.csrf_token)


def page(
    request: Request,
    name: str,
    session: Session | None,
    values: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
) -> Response:
    """Render a template with what every page needs (who is signed in, the CSRF token)."""
    return templates.TemplateResponse(
        request,
        name,
        {"session": session, "prefix": PREFIX, "csrf_field": CSRF_FIELD, **(values or {})},
        status_code=status,
    )


def problem(
    request: Request,
    session: Session,
    why: str,
    *,
    status: int = 502,
    back: tuple[str, str] | None = None,
) -> Response:
    """The page that says what was not done and why; `back`: the page to go back to (its
    path under the console, what it is called), else the dead letters."""
    return page(request, "problem.html", session, {"why": why, "back": back}, status=status)


class Refusal(Exception):
    """What the operator asked cannot be done; the message says what to change."""


def read_reason(form: Form) -> str:
    """The form's reason on one line; `Refusal` when it is missing or too long."""
    reason = " ".join(form.get("reason").split())
    if not reason:
        raise Refusal("say why: the reason is required, and kept in the audit log")
    if len(reason) > MAX_REASON:
        raise Refusal(f"the reason is longer than {MAX_REASON} characters")
    return reason


def read_rate(text: str, noun: str) -> float | None:
    """At most this many `noun` a second (None: no limit); `Refusal` unless positive."""
    if not text.strip():
        return None
    try:
        rate = float(text)
    except ValueError:
        raise Refusal(f"the rate is a number of {noun} a second") from None
    if not math.isfinite(rate) or rate <= 0:
        raise Refusal(f"the rate must be a positive number of {noun} a second")
    return rate


def message_view(headers: Mapping[str, Any], body: bytes) -> dict[str, str]:
    """A message's headers and body as the pages show them, indented JSON where it is."""
    parsed = parsed_body(body)
    return {
        "headers": json.dumps(jsonable(dict(headers)), indent=2, sort_keys=True),
        "body": parsed if isinstance(parsed, str) else json.dumps(parsed, indent=2),
    }
