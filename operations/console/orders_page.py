"""Order search (by name, or an order, checkout or cancellation id) and an order's page."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from checkout_api.usecases.errors import OrderNotFound
from checkout_api.usecases.queries import get_order, search_orders
from infra.db.session import UnitOfWork
from operations.console.guard import signed_in
from operations.console.sessions import Session
from operations.console.timeline_view import draw
from operations.console.web import PREFIX, context, page
from operations.timeline.query import resolve, trace

PAGE_SIZE = 50
_RELATED = {
    "cancellations": (
        "SELECT cancellation_id, state, reason, rejection_reason, checkout_id, created_at,"
        " updated_at FROM cancellations WHERE order_id = %s ORDER BY created_at"
    ),
    # A cancellation's refund, and a late charge's (no cancellation: the checkout had
    # already failed when the charge succeeded).
    "refunds": (
        "SELECT refund_id, status, amount, currency, reason, cancellation_id, payment_id,"
        " provider_refund_id, created_at, updated_at FROM refunds WHERE order_id = %s"
        " ORDER BY created_at"
    ),
}


@signed_in
async def search(request: Request, session: Session) -> Response:
    ctx = context(request)
    query = request.query_params.get("q", "").strip()[:200]
    try:
        wanted = uuid.UUID(query)
    except ValueError:
        wanted = None
    if wanted is not None:
        order_id = await _order_of(ctx.uow, wanted)
        if order_id is not None:
            return RedirectResponse(f"{PREFIX}/orders/{order_id}", status_code=303)
        return page(request, "orders.html", session, {"q": query, "orders": [], "by_id": True})
    found = await search_orders(ctx.uow, name=query or None, limit=PAGE_SIZE, after=None)
    return page(request, "orders.html", session, {"q": query, "orders": found.items})


async def _order_of(uow: UnitOfWork, wanted: uuid.UUID) -> uuid.UUID | None:
    """The order `wanted` names: its own id, a checkout's or a cancellation's (None: no such)."""
    async with uow() as db:
        try:
            order_id, _ = await resolve(await db.connection(), wanted)
        except KeyError:
            return None
    return order_id


@signed_in
async def order_page(request: Request, session: Session) -> Response:
    ctx = context(request)
    try:
        order_id = uuid.UUID(request.path_params["order_id"])
        order = await get_order(ctx.uow, order_id)
    except (ValueError, OrderNotFound):
        return page(request, "not_found.html", session, {"what": "order"}, status=404)
    connection = ctx.broker.connection
    async with ctx.uow() as db:
        conn = await db.connection()
        found = await trace(
            conn,
            order_id,
            rabbit=connection,
            topology=ctx.topology if connection is not None else None,
            broker_error=None if connection is not None else "RabbitMQ is not connected",
        )
    related = await _related(ctx.uow, order_id)
    return page(
        request,
        "order.html",
        session,
        {
            "order": order,
            "trace": found,
            "drawn": [draw(c) for c in found.checkouts] if found else [],
            "drawn_cancellations": [draw(c) for c in found.cancellations] if found else [],
            **related,
        },
    )


async def _related(uow: UnitOfWork, order_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """The order's cancellations and refunds, as rows."""
    out: dict[str, list[dict[str, Any]]] = {}
    async with uow.reads() as conn:
        for table, statement in _RELATED.items():
            cursor = await conn.execute(statement, (order_id,))
            names = [d.name for d in cursor.description or []]
            out[table] = [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
    return out
