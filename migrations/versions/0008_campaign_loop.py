"""The retry/revise loop's bookkeeping gets its own column: campaigns.loop (attempt, revision, the
decision per round, the events announced once, the batches each round fans out to). It used to travel inside campaigns.state as `_loop`
and `_announced`, mixed with the stage outputs."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("loop", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")))
    # Campaigns in flight keep their loop: move the two bookkeeping keys out of state.
    op.execute(
        """
        UPDATE campaigns SET
            loop = coalesce(state->'_loop', '{}'::jsonb)
                   || jsonb_build_object('announced', coalesce(state->'_announced', '[]'::jsonb))
                   || CASE WHEN state->'plan' ? 'batches'
                           THEN jsonb_build_object('batches', jsonb_build_object(round::text, state->'plan'->'batches'))
                           ELSE '{}'::jsonb END,
            state = state - '_loop' - '_announced'
        WHERE state ? '_loop' OR state ? '_announced' OR state ? 'plan'
        """
    )


def downgrade() -> None:
    op.execute(
        """
        UPDATE campaigns SET state = state
            || jsonb_build_object('_loop', loop - 'announced', '_announced', coalesce(loop->'announced', '[]'::jsonb))
        WHERE loop <> '{}'::jsonb
        """
    )
    op.drop_column("campaigns", "loop")
