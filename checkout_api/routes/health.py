"""Liveness, readiness and metrics: for orchestrators and Prometheus."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import Response

from checkout_api.deps import BrokerDep, MetricsDep, UowDep
from checkout_api.errors import problem, problem_type
from checkout_api.routes.docs import problems
from checkout_api.usecases.readiness import check_readiness

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["live", "ready"]
    checks: dict[str, str] = {}


@router.get("/health/live")
async def live() -> Health:
    """200 while the process is up."""
    return Health(status="live")


@router.get("/health/ready", response_model=Health, responses=problems(503))
async def ready(uow: UowDep, broker: BrokerDep) -> Health | JSONResponse:
    """200 when the database and the broker answer, else 503 naming what failed."""
    readiness = await check_readiness(uow, broker)
    checks = {"database": readiness.database, "broker": readiness.broker}
    if readiness.ready:
        return Health(status="ready", checks=checks)
    return problem(
        503,
        "not ready: " + ", ".join(f"{name} {checks[name]}" for name in readiness.failed),
        type_=problem_type("not-ready"),
        title="Not ready",
        checks=checks,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
