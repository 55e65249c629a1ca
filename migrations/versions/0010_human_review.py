"""Human review and the closed loop: review rounds (campaigns.review_round, results.review_round), the
campaign's review state, each result's latest decision and the whole history (result_decisions), feedback
routed to a typed change (feedback), signed review links (review_links), per-brand ranking weights learned
from decisions (brand_rankers) and each brand's DAM push policy (brands.dam_push).

Results delivered before this migration belong to review round 0 and are undecided.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def _tenant() -> sa.Column:
    return sa.Column(
        "tenant_id", UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False
    )


def _campaign() -> sa.Column:
    return sa.Column(
        "campaign_id", UUID(as_uuid=True), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), index=True, nullable=False
    )


def _json(name: str, default: str = "'[]'::jsonb") -> sa.Column:
    return sa.Column(name, JSONB(), nullable=False, server_default=sa.text(default))


def upgrade() -> None:
    op.add_column("brands", sa.Column("dam_push", sa.String(20), nullable=False, server_default="on_completion"))
    op.create_check_constraint("ck_brands_dam_push", "brands", "dam_push IN ('on_completion', 'on_approval')")
    op.add_column("campaigns", sa.Column("review_round", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("campaigns", sa.Column("review_state", sa.String(20)))
    # Campaigns that already delivered results wait for a reviewer like new ones.
    op.execute(
        "UPDATE campaigns SET review_state = 'pending' WHERE status IN ('completed', 'partial') "
        "AND EXISTS (SELECT 1 FROM results r WHERE r.campaign_id = campaigns.id)"
    )
    op.add_column("results", sa.Column("review_round", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("results", sa.Column("decision", sa.String(20)))
    op.add_column("results", sa.Column("decided_by", sa.String(300)))
    op.add_column("results", sa.Column("decided_at", _TS))
    op.drop_constraint("results_campaign_id_rank_key", "results", type_="unique")
    op.create_unique_constraint(
        "results_campaign_id_review_round_rank_key", "results", ["campaign_id", "review_round", "rank"]
    )
    op.add_column("idempotency_keys", sa.Column("resource_id", UUID(as_uuid=True)))
    op.create_table(
        "result_decisions",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        _tenant(),
        _campaign(),
        sa.Column(
            "result_id", UUID(as_uuid=True), sa.ForeignKey("results.id", ondelete="CASCADE"), index=True, nullable=False
        ),
        sa.Column("review_round", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        _json("reasons"),
        sa.Column("comment", sa.Text(), nullable=False, server_default=""),
        sa.Column("reviewer", sa.String(300), nullable=False),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        _tenant(),
        _campaign(),
        sa.Column("review_round", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False, server_default=""),
        _json("reasons"),
        sa.Column("reviewer", sa.String(300), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="routing"),
        _json("change", "'{}'::jsonb"),
        _json("not_understood"),
        _json("notes"),
        sa.Column("router", sa.String(50)),
        sa.Column("entry_stage", sa.String(30)),
        sa.Column("first_round", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("routed_at", _TS),
    )
    # One feedback per review round: a second reviewer's feedback on the same round is a 409, not a race.
    op.create_unique_constraint("feedback_campaign_id_review_round_key", "feedback", ["campaign_id", "review_round"])
    op.create_table(
        "review_links",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        _tenant(),
        _campaign(),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS),
        sa.Column("last_used_at", _TS),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "brand_rankers",
        sa.Column("brand_id", UUID(as_uuid=True), sa.ForeignKey("brands.id", ondelete="CASCADE"), primary_key=True),
        _tenant(),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
        _json("weights", "'{}'::jsonb"),
        sa.Column("pairs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("decisions", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("updated_at", _TS, server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("brand_rankers")
    op.drop_table("review_links")
    op.drop_table("feedback")
    op.drop_table("result_decisions")
    op.drop_column("idempotency_keys", "resource_id")
    op.execute(
        "DELETE FROM results WHERE review_round <> (SELECT c.review_round FROM campaigns c WHERE c.id = campaign_id)"
    )
    op.drop_constraint("results_campaign_id_review_round_rank_key", "results", type_="unique")
    op.create_unique_constraint("results_campaign_id_rank_key", "results", ["campaign_id", "rank"])
    for column in ("decided_at", "decided_by", "decision", "review_round"):
        op.drop_column("results", column)
    op.drop_column("campaigns", "review_state")
    op.drop_column("campaigns", "review_round")
    op.drop_constraint("ck_brands_dam_push", "brands", type_="check")
    op.drop_column("brands", "dam_push")
