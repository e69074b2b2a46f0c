"""HTTP routes of one simulated service: the service itself, its inspection, its outage switch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StrictBool

from mock_services.outcomes import PROBLEM_MEDIA_TYPE, Outcome
from mock_services.service import MockService
from mock_services.store import JsonObject

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
Include = Annotated[
    Literal["status_code"] | None,
    Query(description="`status_code`: also the status code of each entry's stored answer"),
]


class OutageSwitch(BaseModel):
    """`{"down": true}` or `{"down": false}`."""

    down: StrictBool


class OutageState(BaseModel):
    """The switch's new position."""

    service: str
    down: bool


def respond(outcome: Outcome) -> Response:
    """The HTTP response for an outcome; errors as problem JSON."""
    media_type = PROBLEM_MEDIA_TYPE if outcome.status_code >= 400 else "application/json"
    return JSONResponse(outcome.body, status_code=outcome.status_code, media_type=media_type)


def service_router(service: MockService[Any]) -> APIRouter:
    """The three routes of `service`, bound to its store."""
    spec = service.spec
    router = APIRouter(tags=[spec.name])
    # The body is read raw, not through a FastAPI parameter: a validation 422 is a final
    # answer that the key must replay, so validation happens inside the pipeline.
    request_body = {"content": {"application/json": {"schema": spec.model.model_json_schema()}}}

    @router.post(
        spec.path,
        name=f"{spec.name}:call",
        status_code=spec.success_status,
        openapi_extra={"requestBody": {"required": True, **request_body}},
    )
    async def call(request: Request, idempotency_key: IdempotencyKey = None) -> Response:
        """Call the simulated service; a repeated Idempotency-Key replays the first result."""
        body = await request.body()
        return respond(await service.handle(idempotency_key or None, body, request.path_params))

    @router.get(spec.inspect_path, name=f"{spec.name}:inspect")
    async def inspect(include: Include = None) -> list[JsonObject]:
        """Every entry: one per idempotency key, or per request without one.

        Each is `{"idempotency_key", "attempts", "request", "response"}`;
        `?include=status_code` adds the status code of the stored answer.
        """
        with_status = include == "status_code"
        return [entry.as_json(status_code=with_status) for entry in service.store.entries()]

    if spec.outage_path is None:
        return router  # switched with the rest of its system

    @router.post(spec.outage_path, name=f"{spec.name}:outage")
    async def outage(switch: OutageSwitch) -> OutageState:
        """Switch the outage on (503 to everything, attempts still recorded) or off."""
        service.store.down = switch.down
        structlog.get_logger().info("mock_outage", service=spec.name, down=switch.down)
        return OutageState(service=spec.name, down=switch.down)

    return router
