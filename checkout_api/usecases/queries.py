"""The read side: one order, a search page, one checkout. Read-only transactions."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Row, Select

from checkout_api.cursor import PageCursor, encode_cursor
from checkout_api.schemas.cancellations import CancellationOut
from checkout_api.schemas.checkouts import CheckoutOut
from checkout_api.schemas.orders import OrderOut, OrderPage
from checkout_api.usecases.cancellation_views import load_cancellation
from checkout_api.usecases.checkout_views import load_checkout
from checkout_api.usecases.errors import CancellationNotFound, CheckoutNotFound, OrderNotFound
from checkout_api.usecases.order_views import contains_pattern, to_order
from checkout_api.usecases.sql import as_psycopg, search_matches, search_window, select_orders
from infra.db.session import UnitOfWork


async def get_order(uow: UnitOfWork, order_id: uuid.UUID) -> OrderOut:
    async with uow() as session:
        conn = await session.connection()
        result = await conn.execute(select_orders(by_id=True), {"order_id": order_id, "limit": 1})
        row = result.first()
    if row is None:
        raise OrderNotFound(order_id)
    return to_order(row)


# How many orders a name search walks newest first, window after window, before it
# tries the trigram index: up to 1,200, 3,000 and 15,000 orders, for a page of 20
# (a bigger page walks proportionally more). See `_orders_named`.
SEARCH_WINDOWS = (1_200, 1_800, 12_000)
WINDOWS_PAGE = 21

# The statements of one page see one snapshot (`_orders_named`); nothing here writes.
ONE_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

# Three characters of a word in a row: pg_trgm takes at least one trigram from them,
# so the trigram index can narrow the search. (pg_trgm's word characters are the
# database's alphanumerics; Python's may differ for a rare character, which costs
# only the choice of a slower plan, never a wrong result.)
_TRIGRAM = re.compile(r"[^\W_]{3}")


async def search_orders(
    uow: UnitOfWork, *, name: str | None, limit: int, after: PageCursor | None
) -> OrderPage:
    """Orders whose name contains `name` (any case), newest first, `limit` per page."""
    # One row more than the page tells whether there is a next page.
    params: dict[str, Any] = {"limit": limit + 1}
    if after is not None:
        params["after_created_at"] = after.created_at
        params["after_order_id"] = after.order_id
    rows: Sequence[Row[Any] | dict[str, Any]]
    if name:
        params["pattern"] = contains_pattern(name)
        async with uow.transaction() as driver:
            rows = await _orders_named(driver, name, params, after=after is not None)
    else:
        async with uow() as session:
            conn = await session.connection()
            statement = select_orders(after=after is not None)
            rows = (await conn.execute(statement, params)).all()
    items = [to_order(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(PageCursor(last.created_at, last.order_id))
    return OrderPage(items=items, next_cursor=next_cursor)


async def _orders_named(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any], *, after: bool
) -> list[dict[str, Any]]:
    """The first `params["limit"]` orders after the cursor whose name contains `name`.

    Two plans serve `ILIKE '%text%' ORDER BY created_at DESC LIMIT n`: walk
    orders_created_idx newest first until n orders match (cheap when many match), or
    fetch every match through the trigram index and sort them (cheap when few do).
    The planner picks one from its estimate of how many orders match, and a rare word
    that happens to hit an entry of order_name's histogram is estimated at hundreds of
    rows where it has a handful: it walks ~100,000 orders (60-100 ms) where the
    trigram index takes ~6 ms. So the choice is made here, from what the data says:
    walk a window of orders (`search_window`); if it ends short of n matches, walk
    the next window only if, at the best rate the matches so far allow (one more
    than found), the windows left would complete the page; else, and after the last
    window, fetch the page through the trigram index (`search_matches`, from the
    cursor: a page of its own). A common word ends in the first window, a rare word
    (0-1 match in it) goes to the trigram index after ~1.5 ms, a phrase in 1 order of
    200 (~6 matches) walks on.

    A page made of several windows is what one statement would have returned: they
    run in one REPEATABLE READ transaction, each from where the last one ended. A
    text without three word characters in a row gives the trigram index nothing to
    look up: the planner's statement walks or scans, as it always did. The statements
    run on the transaction's psycopg connection, compiled once: SQLAlchemy's session,
    its pre-ping and its rows cost ~1 ms a page more.
    """

    async def run(statement: Select[Any], values: dict[str, Any]) -> list[dict[str, Any]]:
        sql, defaults = as_psycopg(statement)
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(sql, defaults | values)
            return await cursor.fetchall()

    async def run_last(statement: Select[Any], values: dict[str, Any]) -> list[dict[str, Any]]:
        """`run` for the page's last statement: its transaction's end travels with it."""
        sql, defaults = as_psycopg(statement)
        async with conn.pipeline(), conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(sql, defaults | values)
            await conn.execute("COMMIT")  # it only read: no ROLLBACK round trip after it
            return await cursor.fetchall()

    if not _TRIGRAM.search(name):
        return await run_last(select_orders(by_name=True, after=after), params)
    wanted: int = params["limit"]
    scale = -(-wanted // WINDOWS_PAGE)  # 1 for pages up to 20, up to 5 for 100
    windows = [size * scale for size in SEARCH_WINDOWS]
    found: list[dict[str, Any]] = []
    walked = 0
    step, step_after = params, after
    for i, window in enumerate(windows):
        shape = search_window(window=window, after=step_after)
        if i == 0:  # BEGIN, the snapshot's isolation and the first window: one round trip
            async with conn.pipeline():
                await conn.execute(ONE_SNAPSHOT)
                rows = await run(shape, step)
        else:
            rows = await run(shape, step)
        found += [row for row in rows if not row["marker"]]
        marker = next((row for row in rows if row["marker"]), None)
        if marker is None:
            return found  # n matches, or every match after the cursor
        walked += window
        if (wanted - len(found)) * walked > sum(windows[i + 1 :]) * (len(found) + 1):
            break
        step = {
            **params,
            "limit": wanted - len(found),
            "after_created_at": marker["created_at"],
            "after_order_id": marker["order_id"],
        }
        step_after = True
    return await run_last(search_matches(after=after), params)


async def get_checkout(uow: UnitOfWork, checkout_id: uuid.UUID) -> CheckoutOut:
    async with uow() as session:
        checkout = await load_checkout(await session.connection(), checkout_id)
    if checkout is None:
        raise CheckoutNotFound(checkout_id)
    return checkout


async def get_cancellation(uow: UnitOfWork, cancellation_id: uuid.UUID) -> CancellationOut:
    async with uow.reads() as conn:
        cancellation = await load_cancellation(conn, cancellation_id)
    if cancellation is None:
        raise CancellationNotFound(cancellation_id)
    return cancellation
