"""A dead-letter audit entry can say `incomplete`: some message ids were not found.

`checkout dlq replay|purge --message-id ...` with an id that is not in the queue does
what it can with the others and exits 1; its entry said `completed` (wrong) and then
`interrupted`, which means the broker stopped the operation part-way. `incomplete`
says what happened: it ran to its end, and `missing` names the ids it did not find.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("dlq_audit_outcome", "dlq_audit", type_="check")
    op.create_check_constraint(
        "dlq_audit_outcome", "dlq_audit", "outcome IN ('completed', 'interrupted', 'incomplete')"
    )


def downgrade() -> None:
    op.execute("UPDATE dlq_audit SET outcome = 'interrupted' WHERE outcome = 'incomplete'")
    op.drop_constraint("dlq_audit_outcome", "dlq_audit", type_="check")
    op.create_check_constraint(
        "dlq_audit_outcome", "dlq_audit", "outcome IN ('completed', 'interrupted')"
    )
