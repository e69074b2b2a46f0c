"""Durable deadlines: a saga's timers as rows (CONTRACT.md section 8).

A row is written in the transaction of the transition that sets it and deleted by the
one that makes it moot; any saga instance claims due rows with FOR UPDATE SKIP LOCKED
(`saga.deadlines`). One row per (saga, saga_id, kind): setting it again moves it.
`attempts` counts how often it fired, for the backoff of the next one.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deadlines",
        sa.Column("deadline_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("saga", sa.String(20), nullable=False),
        sa.Column("saga_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("saga IN ('checkout', 'cancellation')", name="deadlines_saga"),
        sa.CheckConstraint("attempts >= 0", name="deadlines_attempts"),
        sa.UniqueConstraint("saga", "saga_id", "kind", name="deadlines_one_per_kind"),
    )
    op.create_index("deadlines_due_at", "deadlines", ["due_at"])


def downgrade() -> None:
    op.drop_index("deadlines_due_at", table_name="deadlines")
    op.drop_table("deadlines")
