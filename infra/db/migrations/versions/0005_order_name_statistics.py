"""Finer statistics on orders.order_name, so the planner can tell a common substring
from a rare one.

`GET /orders?name=` is `order_name ILIKE '%text%' ORDER BY created_at DESC LIMIT n`.
Two plans serve it: walk orders_created_idx newest first and stop at n matches (fast
when many orders match), or fetch every match through the trigram index and sort
them (fast when few do). PostgreSQL estimates an unanchored pattern by trying it on
the column's histogram; with the default 100 entries a substring in 1 order of 200
("campaign poster") matches none of them, is estimated at a handful of rows, and gets
the trigram plan: ~40-80 ms on a million orders instead of ~4 ms. With 2,000 entries
the estimates follow the data closely enough for phrases and common words. The price
is planning: the pattern is tried on every entry, about 2.7 ms a search at 2,000
(1.5 ms at the default) and 12 ms at 10,000, which would cost more than it saves. A
rare word (1 order in 5,000) that happens to hit an entry is still estimated at 500
rows and walks ~50,000 orders the other way (50-80 ms): about 1 rare word in 20 here
(README "The benchmark"). ANALYZE samples 600,000 rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orders ALTER COLUMN order_name SET STATISTICS 2000")
    op.execute("ANALYZE orders")


def downgrade() -> None:
    op.execute("ALTER TABLE orders ALTER COLUMN order_name SET STATISTICS -1")
