"""Orders: create, search, read."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError
from structlog.contextvars import bind_contextvars

from checkout_api.cursor import InvalidCursor, PageCursor, decode_cursor
from checkout_api.deps import UowDep
from checkout_api.exact_json import ExactNumbersRoute
from checkout_api.routes.docs import located, problems
from checkout_api.schemas.orders import CreateOrder, OrderOut, OrderPage
from checkout_api.usecases import queries
from checkout_api.usecases.create_order import create_order

# Exact numbers: an amount sent as a JSON number is judged as sent, not as a float.
router = APIRouter(prefix="/orders", tags=["orders"], route_class=ExactNumbersRoute)

NameQuery = Annotated[
    str | None,
    # No NUL: PostgreSQL text cannot hold one (422 rather than a failed query).
    Query(
        max_length=200,
        pattern="^[^\\x00]*$",
        description="Case-insensitive substring of the order name",
    ),
]
LimitQuery = Annotated[int, Query(ge=1, le=100, description="Orders per page")]
CursorQuery = Annotated[
    str | None, Query(max_length=64, description="`next_cursor` of the previous page")
]


def _page_cursor(cursor: str | None) -> PageCursor | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except InvalidCursor as exc:
        raise RequestValidationError(
            [{"type": "cursor", "loc": ("query", "cursor"), "msg": str(exc)}]
        ) from None


@router.post(
    "",
    status_code=201,
    responses={**located(201, "/orders/{order_id}"), **problems(422)},
)
async def post_order(body: CreateOrder, uow: UowDep, response: Response) -> OrderOut:
    """Create an order; it is PENDING until a checkout pays it."""
    order = await create_order(uow, body)
    bind_contextvars(order_id=str(order.order_id))
    response.headers["Location"] = f"/orders/{order.order_id}"
    return order


@router.get("", responses=problems(422))
async def search_orders(
    uow: UowDep, name: NameQuery = None, limit: LimitQuery = 20, cursor: CursorQuery = None
) -> OrderPage:
    """Orders whose name contains `name` (all orders without it), newest first."""
    return await queries.search_orders(uow, name=name, limit=limit, after=_page_cursor(cursor))


@router.get("/{order_id}", responses=problems(404, 422))
async def get_order(order_id: uuid.UUID, uow: UowDep) -> OrderOut:
    """One order with its latest payment and its invoice."""
    bind_contextvars(order_id=str(order_id))
    return await queries.get_order(uow, order_id)
