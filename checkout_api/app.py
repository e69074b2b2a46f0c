"""The API's composition root: `create_app(settings)` builds everything, imports build nothing."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from checkout_api.auth import Access, AuthMiddleware, route_access
from checkout_api.body_limit import BodyLimitMiddleware
from checkout_api.docs_ui import install_docs_ui
from checkout_api.errors import install_error_handlers
from checkout_api.lifespan import make_lifespan
from checkout_api.metrics import ApiMetrics
from checkout_api.middleware import RequestMiddleware
from checkout_api.openapi import install_openapi
from checkout_api.routes import cancellations, checkouts, docs, health, orders, timeline
from checkout_api.strict_query import reject_unknown_query
from infra.settings import Settings
from operations.console.app import console_routes

MAX_BODY_BYTES = 64 * 1024  # an order is a few hundred bytes

DESCRIPTION = """\
Create orders and check them out. A checkout is accepted (202) and proceeds
asynchronously; poll `GET /checkouts/{checkout_id}` or the order for its outcome.
Errors are `application/problem+json` (RFC 9457).
"""


def _operation_id(route: APIRoute) -> str:
    return route.name  # post_order, search_orders, post_checkout, ...


# Who may call each router; FastAPI's own routes (/docs, /openapi.json, ...) are public.
ROUTER_ACCESS = (
    (orders.router, Access.clerk),
    (checkouts.router, Access.clerk),
    (cancellations.router, Access.clerk),
    (timeline.router, Access.operator),
    (health.router, Access.public),
    (docs.router, Access.public),
)


def create_app(settings: Settings) -> FastAPI:
    """A new API app; its engine and broker link are made by its lifespan."""
    metrics = ApiMetrics()  # per app: two apps in one process keep separate registries
    app = FastAPI(
        title="Checkout API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=make_lifespan(settings, metrics),
        generate_unique_id_function=_operation_id,
        dependencies=[Depends(reject_unknown_query)],
        docs_url=None,  # served with local assets instead (install_docs_ui)
        redoc_url=None,
    )
    install_docs_ui(app)
    # The operators' console signs its operators in itself (a session cookie, not a
    # bearer key): public to the key middleware, guarded inside (operations.console).
    app.router.routes.extend(console_routes())
    builtin = list(app.routes)  # the documents, their assets and the console
    routers = [router for router, _ in ROUTER_ACCESS]
    for router in routers:
        app.include_router(router)
    access = [(route, Access.public) for route in builtin] + [
        (route, level) for router, level in ROUTER_ACCESS for route in router.routes
    ]
    # Added last is outermost: RequestMiddleware sees (logs, counts) every refusal; the
    # key is checked before the body is read. Unknown paths need a key too (then 404).
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(
        AuthMiddleware,
        access_for=route_access(access, default=Access.clerk),
        limits=settings.rate_limits,
    )
    app.add_middleware(RequestMiddleware, metrics=metrics)
    install_error_handlers(app, [route for router in routers for route in router.routes])
    install_openapi(
        app,
        {
            getattr(route, "path", ""): level
            for route, level in access
            if level is not Access.public
        },
    )
    # Server spans for every request but health and metrics scrapes; the checkout's
    # outbox row carries the span's context on to every other part. Without the
    # per-message "http send"/"http receive" child spans: they say nothing the server
    # span does not, and each is a span's work on every request.
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="health/live,health/ready,metrics",
        exclude_spans=["receive", "send"],
    )
    return app
