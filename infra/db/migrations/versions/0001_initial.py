"""Initial schema: orders, checkouts and their steps, payments, invoices, the
consumers' effect tables, outbox, inbox and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
MONEY = sa.Numeric(12, 2)


def upgrade() -> None:
    # pg_trgm is a trusted extension (PostgreSQL 13+): no superuser needed.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")

    op.create_table(
        "orders",
        sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("order_name", sa.String(200), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("customer_email", sa.String(320), nullable=False),
        sa.Column("customer_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint("status IN ('PENDING', 'PAID', 'FAILED')", name="orders_status"),
        sa.CheckConstraint("amount > 0", name="orders_amount_positive"),
    )
    op.execute("CREATE INDEX orders_created_idx ON orders (created_at DESC, order_id DESC)")
    op.execute("CREATE INDEX orders_name_trgm_idx ON orders USING gin (order_name gin_trgm_ops)")

    op.create_table(
        "checkouts",
        sa.Column("checkout_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "state IN ('STARTED', 'PAYMENT_PENDING', 'PAID', 'FAILED')", name="checkouts_state"
        ),
    )
    op.execute(
        "CREATE UNIQUE INDEX checkouts_one_active_per_order ON checkouts (order_id) "
        "WHERE state IN ('STARTED', 'PAYMENT_PENDING')"
    )
    op.create_index("checkouts_order_idx", "checkouts", ["order_id", "created_at"])

    op.create_table(
        "checkout_steps",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column(
            "checkout_id",
            UUID(as_uuid=True),
            sa.ForeignKey("checkouts.checkout_id"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("checkout_steps_checkout_idx", "checkout_steps", ["checkout_id", "id"])

    op.create_table(
        "payments",
        sa.Column("payment_id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "checkout_id",
            UUID(as_uuid=True),
            sa.ForeignKey("checkouts.checkout_id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_payment_id", sa.String(64)),
        sa.Column("failure_reason", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint("status IN ('PENDING', 'SUCCESSFUL', 'FAILED')", name="payments_status"),
    )
    op.create_index("payments_order_idx", "payments", ["order_id", "created_at"])

    op.create_table(
        "invoices",
        sa.Column("invoice_id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "order_id",
            UUID(as_uuid=True),
            sa.ForeignKey("orders.order_id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("checkout_id", UUID(as_uuid=True), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source_message_id", UUID(as_uuid=True), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint("status IN ('CREATED', 'SENT', 'FAILED')", name="invoices_status"),
    )

    op.create_table(
        "email_notifications",
        sa.Column(
            "order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), primary_key=True
        ),
        sa.Column("checkout_id", UUID(as_uuid=True), nullable=False),
        sa.Column("source_message_id", UUID(as_uuid=True), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("sent_at", TS, nullable=False),
    )

    op.create_table(
        "production_submissions",
        sa.Column(
            "order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), primary_key=True
        ),
        sa.Column("checkout_id", UUID(as_uuid=True), nullable=False),
        sa.Column("source_message_id", UUID(as_uuid=True), nullable=False),
        sa.Column("production_reference", sa.String(64)),
        sa.Column("submitted_at", TS, nullable=False),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("message_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("routing_key", sa.String(128), nullable=False),
        sa.Column("message_type", sa.String(64), nullable=False),
        sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    # One NOTIFY per inserting statement wakes the relays at once; polling is
    # only the fallback for a relay that missed it (e.g. while reconnecting).
    op.execute(
        """
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox', '');
            RETURN NULL;
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()"
    )

    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(32), primary_key=True),
        sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("received_at", TS, nullable=False),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("checkout_id", UUID(as_uuid=True), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "idempotency_keys",
        "inbox",
        "outbox",
        "production_submissions",
        "email_notifications",
        "invoices",
        "payments",
        "checkout_steps",
        "checkouts",
        "orders",
    ):
        op.drop_table(table)
    op.execute("DROP FUNCTION IF EXISTS outbox_notify()")
