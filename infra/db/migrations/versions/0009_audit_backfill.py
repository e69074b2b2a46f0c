"""The audit log records backfills from the event log too.

`checkout events backfill` copies events of `{ns}.orders.log` into one queue; its
entry sits beside replays and purges (`action = 'backfill'`, `queue` the queue copied
into, `dlq` the log read from) and keeps its range and offsets in `details` (since,
until, types, order, the first and last offset copied, where to resume).

Revision ID: 0009
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
# Re-chained after the cancellations, deadlines, invoice VOIDED and console sessions.
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dlq_audit", sa.Column("details", JSONB(), nullable=True))
    op.drop_constraint("dlq_audit_action", "dlq_audit", type_="check")
    op.create_check_constraint(
        "dlq_audit_action", "dlq_audit", "action IN ('replay', 'purge', 'backfill')"
    )


def downgrade() -> None:
    op.execute("DELETE FROM dlq_audit WHERE action = 'backfill'")
    op.drop_constraint("dlq_audit_action", "dlq_audit", type_="check")
    op.create_check_constraint("dlq_audit_action", "dlq_audit", "action IN ('replay', 'purge')")
    op.drop_column("dlq_audit", "details")
