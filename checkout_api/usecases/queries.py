"""The read side: one order, a search page, one checkout. Read-only transactions."""

from __future__ import annotations

import uuid
from typing import Any

from checkout_api.cursor import PageCursor, encode_cursor
from checkout_api.schemas.checkouts import CheckoutOut
from checkout_api.schemas.orders import OrderOut, OrderPage
from checkout_api.usecases.checkout_views import load_checkout
from checkout_api.usecases.errors import CheckoutNotFound, OrderNotFound
from checkout_api.usecases.order_views import contains_pattern, to_order
from checkout_api.usecases.sql import select_orders
from infra.db.session import UnitOfWork


async def get_order(uow: UnitOfWork, order_id: uuid.UUID) -> OrderOut:
    async with uow() as session:
        conn = await session.connection()
        result = await conn.execute(select_orders(by_id=True), {"order_id": order_id, "limit": 1})
        row = result.first()
    if row is None:
        raise OrderNotFound(order_id)
    return to_order(row)


async def search_orders(
    uow: UnitOfWork, *, name: str | None, limit: int, after: PageCursor | None
) -> OrderPage:
    """Orders whose name contains `name` (any case), newest first, `limit` per page."""
    # One row more than the page tells whether there is a next page.
    params: dict[str, Any] = {"limit": limit + 1}
    if name:
        params["pattern"] = contains_pattern(name)
    if after is not None:
        params["after_created_at"] = after.created_at
        params["after_order_id"] = after.order_id
    statement = select_orders(by_name=bool(name), after=after is not None)
    async with uow() as session:
        conn = await session.connection()
        rows = (await conn.execute(statement, params)).all()
    items = [to_order(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(PageCursor(last.created_at, last.order_id))
    return OrderPage(items=items, next_cursor=next_cursor)


async def get_checkout(uow: UnitOfWork, checkout_id: uuid.UUID) -> CheckoutOut:
    async with uow() as session:
        checkout = await load_checkout(await session.connection(), checkout_id)
    if checkout is None:
        raise CheckoutNotFound(checkout_id)
    return checkout
