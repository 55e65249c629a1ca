"""Input guardrails (part K-guardrails): a tenant's blocked terms, and which screens ran on each campaign and asset.

`screening` is null on rows created before this revision: nothing was screened then, and the API says so."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("blocked_terms", postgresql.JSONB(), server_default="[]", nullable=False),
    )
    op.add_column("campaigns", sa.Column("screening", postgresql.JSONB(), nullable=True))
    op.add_column("assets", sa.Column("screening", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("assets", "screening")
    op.drop_column("campaigns", "screening")
    op.drop_column("tenants", "blocked_terms")
