"""The checkout timeline: `checkout_events`, one row per hop of a checkout that no other
table records (a publish by the relay, a retry, a dead-lettering, a payment attempt).

Also a GIN index on `dlq_audit.message_ids`, so that the timeline finds the replays
and purges that touched one checkout's messages (`message_ids ?| ids`) without
reading the whole audit log.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkout_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("checkout_id", UUID(as_uuid=True), nullable=False),
        sa.Column("order_id", UUID(as_uuid=True)),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("message_id", UUID(as_uuid=True)),
        sa.Column("message_type", sa.String(64)),
        sa.Column("duration_ms", sa.Float(precision=53)),
        sa.Column("detail", sa.Text),
    )
    # No foreign keys: events are written on the hot path by parts that do not
    # otherwise touch the checkout's row, and must not lock it or wait on it.
    op.create_index("checkout_events_checkout_idx", "checkout_events", ["checkout_id", "at", "id"])
    op.create_index("checkout_events_order_idx", "checkout_events", ["order_id", "at"])
    op.execute("CREATE INDEX dlq_audit_message_ids_idx ON dlq_audit USING gin (message_ids)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS dlq_audit_message_ids_idx")
    op.drop_table("checkout_events")
