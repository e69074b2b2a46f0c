"""API keys: who may call the API, in which role. Only a hash of each key is stored.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        # SHA-256 of the whole token, hex: the token is 256 random bits, so a slow
        # password hash would add nothing but CPU to every request.
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        # The token's first characters, to tell keys apart in `apikey list`.
        sa.Column("token_prefix", sa.String(16), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("role IN ('clerk', 'operator')", name="api_keys_role"),
    )
    # One live key per name; a revoked name may be reused.
    op.execute(
        "CREATE UNIQUE INDEX api_keys_live_name_idx ON api_keys (name) WHERE revoked_at IS NULL"
    )


def downgrade() -> None:
    op.drop_table("api_keys")
