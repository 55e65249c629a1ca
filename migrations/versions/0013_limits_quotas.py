"""Per-tenant limits and usage counters (part K-limits).

`tenants.limits`: the tenant's overrides of the rate limits and quotas (null: the settings' defaults).
`image_usage`: the images quota's ledger, one row per accepted campaign (reserved at creation, settled to
the candidates it really made); campaign_id is SET NULL on delete so deleting a campaign keeps its usage."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("limits", postgresql.JSONB(), nullable=True))
    op.create_table(
        "image_usage",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("campaign_id", sa.Uuid(), sa.ForeignKey("campaigns.id", ondelete="SET NULL"), nullable=True),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    # The quota sums a tenant's rows of the current day and month.
    op.create_index("ix_image_usage_tenant_created", "image_usage", ["tenant_id", "created_at"])
    op.create_index("ix_image_usage_campaign_id", "image_usage", ["campaign_id"])


def downgrade() -> None:
    op.drop_table("image_usage")
    op.drop_column("tenants", "limits")
