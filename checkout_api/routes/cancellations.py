"""Cancellations: cancel an order, read a cancellation."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from structlog.contextvars import bind_contextvars

from checkout_api.deps import MetricsDep, SettingsDep, UowDep
from checkout_api.routes.checkouts import IdempotencyKeyHeader
from checkout_api.routes.docs import located, problems
from checkout_api.schemas.cancellations import CancellationOut, CancelOrder
from checkout_api.usecases import queries
from checkout_api.usecases.cancel_order import cancel_order

router = APIRouter(tags=["cancellations"])


@router.post(
    "/orders/{order_id}/cancel",
    status_code=202,
    response_model=CancellationOut,
    responses={**located(202, "/cancellations/{cancellation_id}"), **problems(404, 409, 422)},
)
async def post_cancel(
    order_id: uuid.UUID,
    body: CancelOrder,
    uow: UowDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Cancel the order (refunding it if it was paid), or return its active cancellation."""
    bind_contextvars(order_id=str(order_id))
    outcome = await cancel_order(
        uow,
        order_id,
        body.reason,
        refund_window_days=settings.refund_window_days,
        idempotency_key=idempotency_key,
    )
    bind_contextvars(cancellation_id=str(outcome.cancellation_id))
    if outcome.created:
        metrics.cancellations_requested.labels(outcome.state).inc()
    return JSONResponse(
        outcome.body,
        status_code=outcome.status_code,
        headers={"Location": f"/cancellations/{outcome.cancellation_id}"},
    )


@router.get("/cancellations/{cancellation_id}", responses=problems(404, 422))
async def get_cancellation(cancellation_id: uuid.UUID, uow: UowDep) -> CancellationOut:
    """A cancellation, its refund and the steps it went through."""
    bind_contextvars(cancellation_id=str(cancellation_id))
    return await queries.get_cancellation(uow, cancellation_id)
