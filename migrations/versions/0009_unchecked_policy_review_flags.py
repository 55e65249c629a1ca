"""Unchecked is not passed: each brand says what an unchecked rule means (brands.unchecked: review,
the default, fail or pass), and each result says whether it was fully checked or needs review and why
(results.fully_checked, results.needs_review, results.review).

Results delivered before this migration are backfilled from their candidate's stored policy verdict:
a result whose candidate had unchecked rules needs review (review was the only honest reading of
"counted neither way"); one with no unchecked check and no failure was fully checked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("brands", sa.Column("unchecked", sa.String(10), nullable=False, server_default="review"))
    op.create_check_constraint("ck_brands_unchecked", "brands", "unchecked IN ('review', 'fail', 'pass')")
    op.add_column("results", sa.Column("fully_checked", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("results", sa.Column("needs_review", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("results", sa.Column("review", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")))
    # Before 0009 the policy listed every unchecked check (product_dino among them) under qc.policy.unchecked:
    # count the rules only (brand rules among the verdicts, and the guideline verdicts, which have no group); a
    # brand rule with no threshold was measured but not enforced (palette_adherence without min_palette_share).
    op.execute(
        """
        WITH open AS (
            SELECT c.id,
                   coalesce(jsonb_agg(jsonb_build_object(
                                'check', coalesce(v->>'guideline', v->>'check'), 'kind', 'unchecked',
                                'reason', left(v->>'reason', 200)))
                            FILTER (WHERE v->>'status' = 'unchecked'
                                    AND coalesce(v->>'group', 'guideline') IN ('brand', 'guideline')
                                    AND NOT (coalesce(v->>'group', '') = 'brand' AND v->>'threshold' IS NULL)),
                            '[]'::jsonb) AS reasons,
                   coalesce(jsonb_array_length(c.qc->'policy'->'failed'), 0) AS failed
            FROM candidates c
            LEFT JOIN LATERAL jsonb_array_elements(
                CASE WHEN jsonb_typeof(c.qc->'verdicts') = 'array' THEN c.qc->'verdicts' ELSE '[]'::jsonb END
                || CASE WHEN jsonb_typeof(c.qc->'guidelines'->'verdicts') = 'array'
                        THEN c.qc->'guidelines'->'verdicts' ELSE '[]'::jsonb END) v ON true
            WHERE c.id IN (SELECT candidate_id FROM results)
            GROUP BY c.id
        )
        UPDATE results r SET
            needs_review = jsonb_array_length(o.reasons) > 0,
            fully_checked = jsonb_array_length(o.reasons) = 0 AND o.failed = 0,
            review = jsonb_build_object('fallback', false, 'reasons', o.reasons)
        FROM open o WHERE o.id = r.candidate_id
        """
    )


def downgrade() -> None:
    op.drop_column("results", "review")
    op.drop_column("results", "needs_review")
    op.drop_column("results", "fully_checked")
    op.drop_constraint("ck_brands_unchecked", "brands", type_="check")
    op.drop_column("brands", "unchecked")
