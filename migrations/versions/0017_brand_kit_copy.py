"""Ad creatives (issue L): a brand's kit (logos, fonts, text colours, layout rules: shared.brand_kit.BrandKit) and
a campaign's copy (headline, CTA, legal: shared.brand_kit.CampaignCopy; null: no creative version).

Existing brands get an empty kit; existing campaigns no copy."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("brands", sa.Column("kit", postgresql.JSONB(), server_default="{}", nullable=False))
    op.add_column("campaigns", sa.Column("copy", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("campaigns", "copy")
    op.drop_column("brands", "kit")
