"""Entry point of the `mocks` process (`checkout mocks`)."""

from __future__ import annotations

import uvicorn

from infra.logging import configure_logging
from infra.settings import Settings
from mock_services.app import create_app


def run(settings: Settings) -> None:
    """Serve the simulated services on `mocks_host:mocks_port` until SIGINT or SIGTERM."""
    configure_logging(settings, "mocks")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.mocks_host,
        port=settings.mocks_port,
        log_config=None,  # keep the structlog set-up above
        log_level=settings.log_level,
        access_log=False,  # every request is logged by the pipeline, with more context
        # No graceful-shutdown timeout: a request in flight is answered before the process
        # exits (at most the slow payment's 10 s plus the latency); a second Ctrl-C forces.
    )
    uvicorn.Server(config).run()
