"""Deletion of brands, assets, campaigns, webhook endpoints (part K-delete): the storage-deletion outbox.

Rows are deleted in the request's transaction (derived rows cascade); the objects under the deleted resource's
key prefix are removed after the commit by the cleanup job, from this table (retried, swept by the beat)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_deletions",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "tenant_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("resource", sa.String(20), nullable=False),
        sa.Column("resource_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("prefix", sa.String(500), nullable=False),
        sa.Column("passes_left", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_storage_deletions_tenant_id", "storage_deletions", ["tenant_id"])
    op.create_index("ix_storage_deletions_due", "storage_deletions", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_table("storage_deletions")
