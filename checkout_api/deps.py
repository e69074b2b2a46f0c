"""Dependencies: `Annotated` aliases over the lifespan state, so signatures stay one line."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from checkout_api.broker import BrokerLink
from checkout_api.metrics import ApiMetrics
from checkout_api.state import ApiState
from infra.db.session import UnitOfWork
from infra.settings import Settings


def _state(request: Request) -> ApiState:
    # The server copies the lifespan's state into every request's scope.
    return cast(ApiState, request.scope["state"])


# async: a plain `def` dependency would be run in the thread pool.
async def _uow(request: Request) -> UnitOfWork:
    return _state(request)["uow"]


async def _broker(request: Request) -> BrokerLink:
    return _state(request)["broker"]


async def _metrics(request: Request) -> ApiMetrics:
    return _state(request)["metrics"]


async def _settings(request: Request) -> Settings:
    return _state(request)["settings"]


UowDep = Annotated[UnitOfWork, Depends(_uow)]
BrokerDep = Annotated[BrokerLink, Depends(_broker)]
MetricsDep = Annotated[ApiMetrics, Depends(_metrics)]
SettingsDep = Annotated[Settings, Depends(_settings)]
