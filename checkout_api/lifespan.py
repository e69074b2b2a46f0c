"""Start-up and shutdown: the engine, the unit of work and the broker link live here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from fastapi import FastAPI

from checkout_api.broker import BrokerLink
from checkout_api.metrics import ApiMetrics
from checkout_api.state import ApiState
from infra.db.session import UnitOfWork, create_engine
from infra.settings import Settings

log = structlog.get_logger(__name__)


def make_lifespan(
    settings: Settings, metrics: ApiMetrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[ApiState]]:
    """The app's lifespan; it yields the state each request receives (a shallow copy)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[ApiState]:
        engine = create_engine(settings)
        broker = BrokerLink(
            settings.rabbit_url.get_secret_value(), name=f"{settings.namespace}.api"
        )
        broker.start()
        log.info("api started", namespace=settings.namespace)
        try:
            yield ApiState(
                settings=settings, uow=UnitOfWork(engine), broker=broker, metrics=metrics
            )
        finally:
            await broker.close()
            await engine.dispose()
            log.info("api stopped")

    return lifespan
