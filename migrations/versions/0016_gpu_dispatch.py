"""Fair GPU dispatch (part K-fairness): a GPU stage run waits in Postgres until the dispatcher sends it, and a
campaign's priority orders dispatch within its tenant.

Runs that exist already were all sent when they were created: they count as dispatched then."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stage_runs", sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE stage_runs SET dispatched_at = queued_at")
    # The dispatcher's two reads: runs waiting for a slot, and runs holding one (sent, not finished).
    op.create_index(
        "ix_stage_runs_waiting",
        "stage_runs",
        ["tenant_id"],
        postgresql_where=sa.text("dispatched_at IS NULL AND status = 'pending'"),
    )
    op.create_index(
        "ix_stage_runs_in_flight",
        "stage_runs",
        ["stage"],
        postgresql_where=sa.text("dispatched_at IS NOT NULL AND status IN ('pending', 'running')"),
    )
    op.add_column("campaigns", sa.Column("priority", sa.String(20), server_default="standard", nullable=False))


def downgrade() -> None:
    op.drop_column("campaigns", "priority")
    op.drop_index("ix_stage_runs_in_flight", table_name="stage_runs")
    op.drop_index("ix_stage_runs_waiting", table_name="stage_runs")
    op.drop_column("stage_runs", "dispatched_at")
