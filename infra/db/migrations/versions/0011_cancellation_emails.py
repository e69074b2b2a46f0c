"""The cancellation e-mails' record: `cancellation_emails`.

One row per cancellation whose e-mail was sent: the e-mail consumer's record, like
`email_notifications` for the confirmation, which allows one row per order and so
cannot hold a second e-mail of the same order. (The statuses the cancellations need,
orders CANCELLED and invoices VOIDED, are migration 0007's.)

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0011"
down_revision = "0008"  # re-chained after 0007 (cancellations) and 0008 (deadlines)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cancellation_emails",
        sa.Column("cancellation_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("source_message_id", UUID(as_uuid=True), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("refund_amount", sa.Numeric(12, 2)),
        sa.Column("refund_currency", sa.String(3)),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("cancellation_emails_order_idx", "cancellation_emails", ["order_id"])


def downgrade() -> None:
    op.drop_table("cancellation_emails")
