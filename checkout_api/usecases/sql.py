"""The API's SQL, built once as Core statements with bound parameters.

Building a statement costs more CPU than running it on a warm connection: SQLAlchemy
coerces every clause and computes a cache key. A module-level statement is built at
import (pure data, no I/O) and memoises its cache key, so each request only binds
values. Statements run on the session's connection, skipping the ORM layer. (The
checkout itself is plain SQL over psycopg: `checkout_order.py`.)
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import (
    DateTime,
    Integer,
    Select,
    Table,
    bindparam,
    insert,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import UUID

from infra.db.models import (
    Checkout,
    CheckoutStep,
    Invoice,
    Order,
    Payment,
)

orders = cast(Table, Order.__table__)
checkouts = cast(Table, Checkout.__table__)
checkout_steps = cast(Table, CheckoutStep.__table__)
payments = cast(Table, Payment.__table__)
invoices = cast(Table, Invoice.__table__)

INSERT_ORDER = insert(orders)

_CHECKOUT_WITH_STEPS = (
    select(
        checkouts.c.checkout_id,
        checkouts.c.order_id,
        checkouts.c.state,
        checkouts.c.failure_reason,
        checkouts.c.created_at,
        checkouts.c.updated_at,
        checkout_steps.c.name,
        checkout_steps.c.status,
        checkout_steps.c.at,
        checkout_steps.c.detail,
    )
    .select_from(checkouts)
    .outerjoin(checkout_steps, checkout_steps.c.checkout_id == checkouts.c.checkout_id)
    .order_by(checkout_steps.c.id)
)
CHECKOUT_BY_ID = _CHECKOUT_WITH_STEPS.where(checkouts.c.checkout_id == bindparam("checkout_id"))


@cache
def select_orders(
    *, by_id: bool = False, by_name: bool = False, after: bool = False
) -> Select[Any]:
    """Orders newest first with their latest payment and invoice; one statement per shape.

    Bound parameters: `limit`, and `order_id` (by_id), `pattern` (by_name, an ILIKE
    pattern), `after_created_at` and `after_order_id` (after: the cursor).

    The orders are selected and limited first, then each is joined to its most recent
    payment (a LATERAL subquery on payments_order_idx) and its invoice. Limiting before
    joining keeps a page at `limit` index look-ups however many orders match: no N+1,
    and no join over the whole match. The name filter is served by the trigram index
    orders_name_trgm_idx; the cursor's row comparison by orders_created_idx.
    """
    page = select(orders)
    if by_id:
        page = page.where(orders.c.order_id == bindparam("order_id"))
    if by_name:
        page = page.where(orders.c.order_name.ilike(bindparam("pattern")))
    if after:
        page = page.where(
            tuple_(orders.c.created_at, orders.c.order_id)
            < tuple_(
                bindparam("after_created_at", type_=DateTime(timezone=True)),
                bindparam("after_order_id", type_=UUID(as_uuid=True)),
            )
        )
    o = (
        page.order_by(orders.c.created_at.desc(), orders.c.order_id.desc())
        .limit(bindparam("limit", type_=Integer))
        .subquery("o")
    )
    p = (
        select(
            payments.c.payment_id,
            payments.c.status.label("payment_status"),
            payments.c.amount.label("payment_amount"),
        )
        .where(payments.c.order_id == o.c.order_id)
        .order_by(payments.c.created_at.desc(), payments.c.payment_id.desc())
        .limit(1)
        .lateral("p")
    )
    return (
        select(
            o,
            p,
            invoices.c.invoice_id,
            invoices.c.status.label("invoice_status"),
            invoices.c.amount.label("invoice_amount"),
        )
        .select_from(o)
        .outerjoin(p, true())
        .outerjoin(invoices, invoices.c.order_id == o.c.order_id)
        .order_by(o.c.created_at.desc(), o.c.order_id.desc())
    )
