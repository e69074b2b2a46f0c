"""Per-request context, logging, metrics and the catch-all for unexpected errors.

A plain ASGI middleware (no BaseHTTPMiddleware: no extra task, no body buffering).
It sits inside Starlette's ServerErrorMiddleware, so an exception no handler mapped
reaches it first: it is logged with its traceback and the client gets a generic 500
problem, never the exception text.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from checkout_api.errors import problem
from checkout_api.metrics import ApiMetrics

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_QUIET_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
UNMATCHED_ROUTE = "unmatched"  # one label for every unknown path: bounded cardinality

log = structlog.get_logger("checkout_api.request")


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID if it is a sane token, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestMiddleware:
    """Binds request_id, method and path for every log line; one summary line per request."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started_at = time.perf_counter()
        request_id = _request_id(scope)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        method, path = scope["method"], scope["path"]
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, method=method, path=path
        ):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error")
                if response_started:
                    raise
                status = 500
                response = problem(
                    500,
                    "the server failed to answer; the error is logged under the request id",
                    headers={REQUEST_ID_HEADER: request_id},
                )
                await response(scope, receive, send)
            finally:
                elapsed = time.perf_counter() - started_at
                route = _route_template(scope)
                self.metrics.requests.labels(method, route, str(status)).inc()
                self.metrics.latency.labels(method, route).observe(elapsed)
                quiet = path in _QUIET_PATHS and status < 500  # probes and scrapes
                log.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "request",
                    status=status,
                    route=route,
                    duration_ms=round(elapsed * 1000, 1),
                )
                # Ids a route bound for this request must not leak into the next one.
                structlog.contextvars.unbind_contextvars("order_id", "checkout_id")
