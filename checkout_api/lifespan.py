"""Start-up and shutdown: the engine, the unit of work and the broker link live here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from fastapi import FastAPI

from checkout_api.broker import BrokerLink
from checkout_api.metrics import ApiMetrics
from checkout_api.state import ApiState
from infra.auth.keys import KeyChecker
from infra.db.session import UnitOfWork, create_engine, create_pool
from infra.settings import Settings

log = structlog.get_logger(__name__)

# How long a request waits for a pooled connection before it fails (database down, or
# every connection busy). A caller is better served by a prompt answer it can retry
# than by a request held for the pool's default of half a minute.
POOL_TIMEOUT_S = 5.0


def make_lifespan(
    settings: Settings, metrics: ApiMetrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[ApiState]]:
    """The app's lifespan; it yields the state each request receives (a shallow copy)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[ApiState]:
        engine = create_engine(settings)
        # The per-request statements (the key lookup, the checkout) run on a psycopg pool
        # (`infra.db.session`); the engine serves the ORM's queries and readiness.
        pool = create_pool(settings, timeout=POOL_TIMEOUT_S)
        await pool.open(wait=False)
        broker = BrokerLink(
            settings.rabbit_url.get_secret_value(), name=f"{settings.namespace}.api"
        )
        broker.start()
        log.info("api started", namespace=settings.namespace)
        try:
            uow = UnitOfWork(engine, pool)
            yield ApiState(
                settings=settings,
                uow=uow,
                keys=KeyChecker(uow),
                broker=broker,
                metrics=metrics,
            )
        finally:
            await broker.close()
            await pool.close()
            await engine.dispose()
            log.info("api stopped")

    return lifespan
