"""Stage-run leases and heartbeats for the re-send sweep (part K-recovery).

A pending or running stage run carries `lease_until`: set when the run is sent or claimed, renewed by the
running task's heartbeats. The stalled sweep re-sends every run of a live campaign whose lease lapsed.
`claimed_by` ("host:pid") names the process that claimed it. Existing runs get no lease: the sweep treats
a missing lease as lapsed, so work in flight during the upgrade is re-sent once (idempotently)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stage_runs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("stage_runs", sa.Column("claimed_by", sa.String(200), nullable=True))
    # The sweep reads only runs in flight: a partial index keeps it cheap however many runs succeeded.
    op.create_index(
        "ix_stage_runs_in_flight_lease",
        "stage_runs",
        ["lease_until"],
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("ix_stage_runs_in_flight_lease", table_name="stage_runs")
    op.drop_column("stage_runs", "claimed_by")
    op.drop_column("stage_runs", "lease_until")
