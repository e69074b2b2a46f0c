"""The API's SQL, built once as Core statements with bound parameters.

Building a statement costs more CPU than running it on a warm connection: SQLAlchemy
coerces every clause and computes a cache key. A module-level statement is built at
import (pure data, no I/O) and memoises its cache key, so each request only binds
values. Statements run on the session's connection, skipping the ORM layer, or, for
the name search, compiled once (`as_psycopg`) on the transaction's psycopg connection.
(The checkout itself is plain SQL over psycopg: `checkout_order.py`.)
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    Select,
    Subquery,
    Table,
    Text,
    bindparam,
    false,
    func,
    insert,
    literal_column,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

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


NEWEST_FIRST = (orders.c.created_at.desc(), orders.c.order_id.desc())


def _before_cursor() -> ColumnElement[bool]:
    """Orders strictly after the cursor's position, newest first (orders_created_idx)."""
    return tuple_(orders.c.created_at, orders.c.order_id) < tuple_(
        bindparam("after_created_at", type_=DateTime(timezone=True)),
        bindparam("after_order_id", type_=UUID(as_uuid=True)),
    )


def _hidden_pattern() -> ColumnElement[str]:
    """The `pattern` parameter as a one-row subquery (an InitPlan).

    The planner cannot see its value, so it does not try the pattern on order_name's
    2,000-entry histogram (1.3-2.7 ms of planning per ILIKE) and estimates it at its
    default selectivity. The search statements below have one plan whatever the
    pattern: nothing in them depends on that estimate. Index conditions may use it.
    """
    return select(bindparam("pattern", type_=Text)).scalar_subquery()


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
    and no join over the whole match.

    With `by_name` the planner chooses between walking orders_created_idx and the
    trigram index orders_name_trgm_idx from its estimate of the pattern; the search
    uses this shape only for a text no trigram can be taken from (`queries`), where
    the trigram index cannot help. Otherwise it uses `search_window` and
    `search_matches`, whose plans do not depend on an estimate.
    """
    page = select(orders)
    if by_id:
        page = page.where(orders.c.order_id == bindparam("order_id"))
    if by_name:
        page = page.where(orders.c.order_name.ilike(bindparam("pattern")))
    if after:
        page = page.where(_before_cursor())
    o = page.order_by(*NEWEST_FIRST).limit(bindparam("limit", type_=Integer)).subquery("o")
    return _with_payment_and_invoice(o)


@cache
def search_window(*, window: int, after: bool = False) -> Select[Any]:
    """Matches of `pattern` among the newest `window` orders (after the cursor).

    The walk down orders_created_idx stops at `limit` matches or after `window`
    orders, whichever comes first: a bounded cost (~1 us an order, mostly ILIKE)
    whatever the pattern. The matches have `marker` false. If fewer than `limit`
    matched and the window was full, one more row follows them: the `window`-th order
    itself, with `marker` true (a second scan of the index, which PostgreSQL runs only
    then: its condition is a one-time filter). So without a marker the matches are the
    page (`limit` of them, or every match after the cursor); with one, the page may
    go on past the marker, and it goes on from there.
    """
    # The window as a literal, not a parameter: the plan (index scans of at most
    # `window` entries) is then the same whatever the values bound.
    size = int(window)
    limit = bindparam("limit", type_=Integer)
    newest = select(orders)
    if after:
        newest = newest.where(_before_cursor())
    newest = newest.order_by(*NEWEST_FIRST)
    walked = newest.limit(literal_column(str(size))).subquery("walked")
    matches = (
        select(walked, false().label("marker"))
        .where(walked.c.order_name.ilike(_hidden_pattern()))
        .order_by(walked.c.created_at.desc(), walked.c.order_id.desc())
        .limit(limit)
        .cte("matches")
    )
    short = select(func.count()).select_from(matches).scalar_subquery() < limit
    last = (
        newest.add_columns(true().label("marker"))
        .where(short)
        .offset(literal_column(str(size - 1)))
        .limit(literal_column("1"))
    )
    return _with_payment_and_invoice(union_all(select(matches), last).subquery("o"))


@cache
def search_matches(*, after: bool = False) -> Select[Any]:
    """Every order (after the cursor) whose name matches `pattern`, sorted, first `limit`.

    The matches are fetched through the trigram index orders_name_trgm_idx as a
    MATERIALIZED CTE, so the planner cannot turn the statement back into a walk down
    orders_created_idx (its ORDER BY cannot reach inside), then the newest `limit`
    are kept (a top-N sort). Its cost grows with the number of matches: the caller
    uses it when few orders match (`queries`).
    """
    matching = select(orders).where(orders.c.order_name.ilike(_hidden_pattern()))
    if after:
        matching = matching.where(_before_cursor())
    m = matching.cte("matches").prefix_with("MATERIALIZED")
    o = (
        select(m)
        .order_by(m.c.created_at.desc(), m.c.order_id.desc())
        .limit(bindparam("limit", type_=Integer))
        .subquery("o")
    )
    return _with_payment_and_invoice(o)


def _with_payment_and_invoice(o: Subquery) -> Select[Any]:
    """The orders of `o` (a page, already limited) with their latest payment and invoice."""
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


_PSYCOPG = PGDialect_psycopg()  # type: ignore[no-untyped-call]


@cache
def as_psycopg(statement: Select[Any]) -> tuple[str, dict[str, Any]]:
    """`statement` as SQL for a psycopg cursor (`%(name)s` placeholders), compiled once,
    with the values it binds by itself (the caller adds its own over them)."""
    compiled = statement.compile(dialect=_PSYCOPG)
    return str(compiled), dict(compiled.params)
