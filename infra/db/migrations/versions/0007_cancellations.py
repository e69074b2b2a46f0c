"""Cancellations and refunds (CONTRACT.md section 7).

- `cancellations`: one saga row per cancellation request; the partial unique index
  `cancellations_one_active_per_order` allows at most one active (not CANCELLED, not
  REJECTED) cancellation per order, so ten concurrent cancels make one cancellation
  whatever the timing (the database decides, not a check-then-insert).
- `cancellation_steps`: the cancellation's history, like `checkout_steps`.
- `cancellation_keys`: the first response to a cancel request carrying an
  Idempotency-Key (a key of a cancellation is not a key of a checkout).
- `refunds`: one per payment at most (`refunds_one_per_payment`: a full refund can be
  made once) and one per idempotency key (the cancellation id, or the refund id of a
  late charge's refund).
- orders gain CANCELLED, payments REFUNDED, invoices VOIDED.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
MONEY = sa.Numeric(12, 2)

CANCELLATION_STATES = (
    "'REQUESTED', 'WAITING_FOR_CHECKOUT', 'CANCELLING_PRODUCTION', 'REFUNDING',"
    " 'CANCELLED', 'REJECTED'"
)


def _recheck(table: str, name: str, column: str, values: str) -> None:
    op.drop_constraint(name, table, type_="check")
    op.create_check_constraint(name, table, f"{column} IN ({values})")


def upgrade() -> None:
    _recheck("orders", "orders_status", "status", "'PENDING', 'PAID', 'FAILED', 'CANCELLED'")
    _recheck(
        "payments", "payments_status", "status", "'PENDING', 'SUCCESSFUL', 'FAILED', 'REFUNDED'"
    )
    _recheck("invoices", "invoices_status", "status", "'CREATED', 'SENT', 'FAILED', 'VOIDED'")

    op.create_table(
        "cancellations",
        sa.Column("cancellation_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("checkout_id", UUID(as_uuid=True), sa.ForeignKey("checkouts.checkout_id")),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("rejection_reason", sa.Text),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(f"state IN ({CANCELLATION_STATES})", name="cancellations_state"),
    )
    op.execute(
        "CREATE UNIQUE INDEX cancellations_one_active_per_order ON cancellations (order_id) "
        "WHERE state NOT IN ('CANCELLED', 'REJECTED')"
    )
    op.create_index("cancellations_order_idx", "cancellations", ["order_id", "created_at"])
    # The checkout's final transition looks for the cancellation waiting for it.
    op.execute(
        "CREATE INDEX cancellations_waiting_idx ON cancellations (checkout_id) "
        "WHERE state = 'WAITING_FOR_CHECKOUT'"
    )

    op.create_table(
        "cancellation_steps",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column(
            "cancellation_id",
            UUID(as_uuid=True),
            sa.ForeignKey("cancellations.cancellation_id"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index(
        "cancellation_steps_cancellation_idx", "cancellation_steps", ["cancellation_id", "id"]
    )

    op.create_table(
        "cancellation_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("cancellation_id", UUID(as_uuid=True), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )

    op.create_table(
        "refunds",
        sa.Column("refund_id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "payment_id", UUID(as_uuid=True), sa.ForeignKey("payments.payment_id"), nullable=False
        ),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column(
            "cancellation_id", UUID(as_uuid=True), sa.ForeignKey("cancellations.cancellation_id")
        ),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_refund_id", sa.String(64)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint("status IN ('PENDING', 'SUCCEEDED')", name="refunds_status"),
        sa.CheckConstraint("amount > 0", name="refunds_amount_positive"),
    )
    op.create_index("refunds_one_per_payment", "refunds", ["payment_id"], unique=True)
    op.create_index("refunds_order_idx", "refunds", ["order_id"])


def downgrade() -> None:
    for table in ("refunds", "cancellation_keys", "cancellation_steps", "cancellations"):
        op.drop_table(table)
    op.execute("UPDATE invoices SET status = 'FAILED' WHERE status = 'VOIDED'")
    op.execute("UPDATE payments SET status = 'SUCCESSFUL' WHERE status = 'REFUNDED'")
    op.execute("UPDATE orders SET status = 'FAILED' WHERE status = 'CANCELLED'")
    _recheck("invoices", "invoices_status", "status", "'CREATED', 'SENT', 'FAILED'")
    _recheck("payments", "payments_status", "status", "'PENDING', 'SUCCESSFUL', 'FAILED'")
    _recheck("orders", "orders_status", "status", "'PENDING', 'PAID', 'FAILED'")
