"""Per-brand QC thresholds, and each candidate's image embedding for near-duplicate clustering."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("brands", sa.Column("qc_thresholds", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")))
    # No fixed dimension: the DINOv2 size is configuration (base 768, large 1024, tiny test models less).
    op.add_column("candidates", sa.Column("embedding", Vector(), nullable=True))


def downgrade() -> None:
    op.drop_column("candidates", "embedding")
    op.drop_column("brands", "qc_thresholds")
