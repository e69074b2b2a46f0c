"""Routes across all simulated services: reset, health, problem JSON for bad control calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mock_services.outcomes import PROBLEM_MEDIA_TYPE, invalid_body
from mock_services.service import MockService


def control_router(services: Sequence[MockService[Any]]) -> APIRouter:
    """`POST /mock/reset` and the health checks."""
    router = APIRouter(tags=["mock"])

    @router.post("/mock/reset", name="mock:reset")
    async def reset() -> dict[str, list[str]]:
        """Forget every record of every service and switch all outages off."""
        for service in services:
            service.store.reset()
        structlog.get_logger().info("mock_reset")
        return {"reset": [service.spec.name for service in services]}

    @router.get("/health/live", name="health:live")
    async def live() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @router.get("/health/ready", name="health:ready")
    async def ready() -> dict[str, str]:
        """Ready as soon as it is up: the simulations depend on nothing."""
        return {"status": "ok"}

    return router


async def validation_problem(request: Request, exc: Exception) -> Response:
    """A bad body on a control route (e.g. the outage switch) as problem JSON."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"] if part != "body") or "body",
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors()
    ]
    return JSONResponse(invalid_body(errors), status_code=422, media_type=PROBLEM_MEDIA_TYPE)
