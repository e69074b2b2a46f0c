"""Mapping order rows (of `sql.select_orders`) to the Order representation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

from sqlalchemy import Row

from checkout_api.schemas.orders import Customer, InvoiceSummary, OrderOut, PaymentSummary


def contains_pattern(text: str) -> str:
    """An ILIKE pattern matching `text` literally anywhere (backslash is the default escape)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def to_order(row: Row[Any] | Mapping[str, Any]) -> OrderOut:
    """An order of `select_orders` (or a search statement): an SQLAlchemy row, or a
    psycopg one as a dict."""
    m = row._mapping if isinstance(row, Row) else row
    return OrderOut(
        order_id=m["order_id"],
        order_name=m["order_name"],
        amount=m["amount"],
        currency=m["currency"],
        customer=Customer(email=m["customer_email"], name=m["customer_name"]),
        status=m["status"],
        created_at=m["created_at"].astimezone(UTC),
        updated_at=m["updated_at"].astimezone(UTC),
        payment=None
        if m["payment_id"] is None
        else PaymentSummary(
            payment_id=m["payment_id"], status=m["payment_status"], amount=m["payment_amount"]
        ),
        invoice=None
        if m["invoice_id"] is None
        else InvoiceSummary(
            invoice_id=m["invoice_id"], status=m["invoice_status"], amount=m["invoice_amount"]
        ),
    )
