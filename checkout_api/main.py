"""`checkout api`: serve the API with uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import uvicorn

from checkout_api.app import create_app
from infra.db.session import name_connections
from infra.heap import freeze_startup
from infra.logging import configure_logging
from infra.settings import Settings
from infra.tracing import configure_tracing


def run(settings: Settings) -> None:
    """Serve in the foreground; uvicorn finishes in-flight requests on SIGINT/SIGTERM."""
    configure_logging(settings, "api")
    configure_tracing(settings, "api")
    name_connections(settings, "api")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # configure_logging routes uvicorn's loggers through structlog
        access_log=False,  # RequestMiddleware logs one line per request
        server_header=False,
    )
    freeze_startup()
    uvicorn.Server(config).run()
