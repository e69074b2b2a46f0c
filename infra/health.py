"""A small HTTP endpoint for a worker process: `/health/live`, `/health/ready`, `/metrics`.

The relay, the saga and each consumer run one on `CHECKOUT_HEALTH_PORT`, by default a
port free at start (logged, and listed by `checkout up`'s banner, which gives each
part its own): fixed defaults would collide as soon as two systems, or two copies of
a part, run on one machine. It runs in the same event loop as the worker's work and
never handles signals: the worker's own shutdown stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infra.metrics import registry_for
from infra.settings import Settings

log = structlog.get_logger()

ReadinessCheck = Callable[[], Awaitable[bool]]


def health_app(checks: Mapping[str, ReadinessCheck], registry: CollectorRegistry) -> Starlette:
    """Live: the process answers. Ready: every check passes (503 names the ones that fail).
    Metrics: `registry`, what this process measures."""

    async def live(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> JSONResponse:
        results = {}
        for name, check in checks.items():
            try:
                results[name] = await asyncio.wait_for(check(), 3)
            except Exception:  # a check that cannot run has failed
                results[name] = False
        ok = all(results.values())
        body = {
            "status": "ok" if ok else "unavailable",
            "checks": {k: "ok" if v else "failing" for k, v in results.items()},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", metrics),
        ]
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handling: the worker it lives in owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_health(
    settings: Settings, component: str, checks: Mapping[str, ReadinessCheck]
) -> AsyncIterator[int | None]:
    """Serve the health app while the block runs; yield the port (None if it could not bind).

    A port given in CHECKOUT_HEALTH_PORT that is already in use is logged and the
    worker goes on without the endpoint: its real work matters more than its metrics.
    Unset (or 0), any free port is taken, which never fails that way.
    """
    port = settings.health_port or 0
    # Bind here, not in uvicorn: uvicorn exits the process when it cannot bind.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.health_host, port))
    except OSError as exc:
        sock.close()
        log.warning(
            "health endpoint not started",
            port=port,
            error=str(exc),
            hint="set CHECKOUT_HEALTH_PORT (0 picks a free one)",
        )
        yield None
        return
    bound = int(sock.getsockname()[1])
    config = uvicorn.Config(
        health_app(checks, registry_for(component)),
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info(
        "health endpoint listening",
        component=component,
        url=f"http://{settings.health_host}:{bound}",
        metrics=f"http://{settings.health_host}:{bound}/metrics",
    )
    try:
        yield bound
    finally:
        server.should_exit = True
        await task
        sock.close()
