"""Console sessions: an operator signed in to /console with an API key.

The browser holds a random token (256 bits); only its SHA-256 is stored, as for API
keys. A row lives until it expires or its operator signs out; the key is joined on
every request, so revoking it ends its sessions at once, in every API process.

Revision ID: 0010
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0010"
down_revision = "0011"  # re-chained after the cancellations, deadlines and cancellation e-mails
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column(
            "key_id",
            UUID(as_uuid=True),
            sa.ForeignKey("api_keys.key_id", ondelete="CASCADE"),
            nullable=False,
        ),
        # Sent in every form and compared on every POST (CSRF): random, per session.
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("console_sessions_expires_idx", "console_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("console_sessions")
