"""The audit log of operator actions on dead-letter queues (`checkout dlq replay|purge`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dlq_audit",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("dlq", sa.String(255), nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False),
        sa.Column("message_ids", JSONB, nullable=False),
        sa.Column("missing", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("reason", sa.Text),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.CheckConstraint("action IN ('replay', 'purge')", name="dlq_audit_action"),
        sa.CheckConstraint("outcome IN ('completed', 'interrupted')", name="dlq_audit_outcome"),
    )
    # `checkout dlq history` reads newest first.
    op.execute("CREATE INDEX dlq_audit_at_idx ON dlq_audit (at DESC, id DESC)")


def downgrade() -> None:
    op.drop_table("dlq_audit")
