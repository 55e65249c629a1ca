"""Deletion of brands, assets, campaigns, webhook endpoints (part K-delete).

Reserved in the chain by the lead; the part's owner fills upgrade/downgrade (a revision that needs no
schema change stays empty)."""

from __future__ import annotations

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
