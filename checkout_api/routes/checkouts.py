"""Checkouts: start one for an order, read one."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from structlog.contextvars import bind_contextvars

from checkout_api.deps import MetricsDep, SettingsDep, UowDep
from checkout_api.errors import IDEMPOTENCY_HEADER
from checkout_api.routes.docs import located, problems
from checkout_api.schemas.checkouts import CheckoutOut
from checkout_api.usecases import queries
from checkout_api.usecases.checkout_order import checkout_order

router = APIRouter(tags=["checkouts"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=255,
        description="Repeating a key returns the first response; a key belongs to one order",
    ),
]


@router.post(
    "/orders/{order_id}/checkout",
    status_code=202,
    response_model=CheckoutOut,
    responses={**located(202, "/checkouts/{checkout_id}"), **problems(404, 409, 422)},
)
async def post_checkout(
    order_id: uuid.UUID,
    uow: UowDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Start paying the order, or return its active checkout (never a second payment)."""
    bind_contextvars(order_id=str(order_id))
    outcome = await checkout_order(
        uow, order_id, idempotency_key, payment_deadline=settings.payment_deadline
    )
    bind_contextvars(checkout_id=str(outcome.checkout_id))
    if outcome.started:
        metrics.checkouts_started.inc()
    # The body is sent as stored, so a replayed Idempotency-Key gets the first response.
    return JSONResponse(
        outcome.body,
        status_code=outcome.status_code,
        headers={"Location": f"/checkouts/{outcome.checkout_id}"},
    )


@router.get("/checkouts/{checkout_id}", responses=problems(404, 422))
async def get_checkout(checkout_id: uuid.UUID, uow: UowDep) -> CheckoutOut:
    """A checkout and the steps it went through."""
    bind_contextvars(checkout_id=str(checkout_id))
    return await queries.get_checkout(uow, checkout_id)
