"""The console's ASGI app, mounted by the API at /console (`checkout_api.app`).

It runs in the API process and reads the API lifespan's state (engine, pool, broker
link); it adds no process, port or connection of its own. Every response forbids
loading anything from another host (Content-Security-Policy `default-src 'self'`),
being framed, and being cached.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from operations.console import (
    audit_page,
    dead_letters_page,
    events_page,
    keys_page,
    orders_page,
    overview_page,
    signing,
    stuck_page,
)
from operations.console.web import HERE, PREFIX

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


@dataclass(frozen=True)
class _Template:
    """What the API's request metrics and logs read from `scope["route"]` once the
    request is answered: the console page's route template under /console (the
    console's own routes know only the part after it)."""

    path: str


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response, and `no-store` to every page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(f"{PREFIX}/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        finally:
            inner = getattr(scope.get("route"), "path", None)
            scope["route"] = _Template(PREFIX + inner if isinstance(inner, str) else PREFIX)


def create_console() -> ASGIApp:
    """The console's routes under whatever path it is mounted at (the API uses /console)."""
    app = Starlette(
        routes=[
            Route("/", overview_page.overview, name="overview"),
            Route("/sign-in", signing.sign_in_page, methods=["GET"]),
            Route("/sign-in", signing.sign_in, methods=["POST"]),
            Route("/sign-out", signing.sign_out, methods=["POST"]),
            Route("/orders", orders_page.search),
            Route("/orders/{order_id}", orders_page.order_page),
            Route("/dead-letters", dead_letters_page.queues),
            Route("/dead-letters/{queue}", dead_letters_page.queue_page),
            Route("/dead-letters/{queue}/replay", dead_letters_page.replay, methods=["POST"]),
            Route("/dead-letters/{queue}/purge", dead_letters_page.purge, methods=["POST"]),
            Route("/stuck", stuck_page.stuck),
            Route("/events", events_page.events),
            Route("/events/backfill", events_page.backfill, methods=["POST"]),
            Route("/audit", audit_page.audit_log),
            Route("/keys", keys_page.keys),
            Route("/keys/new", keys_page.create, methods=["POST"]),
            Route("/keys/{key_id}/revoke", keys_page.revoke, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
    )
    return SecurityHeaders(app)


def console_routes() -> list[BaseRoute]:
    """The console as routes of the API: /console (to /console/) and everything under it."""

    async def home(_: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    return [Route(PREFIX, home), Mount(PREFIX, app=create_console())]


__all__ = ["console_routes", "create_console"]
