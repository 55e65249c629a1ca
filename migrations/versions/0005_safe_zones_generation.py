"""Campaign safe zones (regions the product must not cover) and each candidate's generation record."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("safe_zones", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")))
    op.add_column("candidates", sa.Column("generation", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")))


def downgrade() -> None:
    op.drop_column("candidates", "generation")
    op.drop_column("campaigns", "safe_zones")
