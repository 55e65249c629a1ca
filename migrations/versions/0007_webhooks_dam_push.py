"""Webhooks (issue F): secret rotation, v1a keys, endpoint health, delivery leases and the per-attempt
log; per-campaign event sequence; DAM push targets (encrypted credentials) and the push outbox."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def _endpoint_columns() -> None:
    for column in (
        sa.Column("previous_secret", sa.String(200)),
        sa.Column("previous_secret_expires_at", _TS),
        sa.Column("signing_key", sa.Text()),  # encrypted ed25519 private key (v1a), when asymmetric
        sa.Column("previous_signing_key", sa.Text()),
        sa.Column("failing_since", _TS),
        sa.Column("disabled_at", _TS),
        sa.Column("disabled_reason", sa.String(300)),
    ):
        op.add_column("webhook_endpoints", column)


def _delivery_columns() -> None:
    op.add_column("webhook_deliveries", sa.Column("leased_until", _TS))
    op.add_column("webhook_deliveries", sa.Column("replay_of", UUID(as_uuid=True)))
    op.create_table(
        "webhook_attempts",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "tenant_id", UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False
        ),
        sa.Column(
            "delivery_id",
            UUID(as_uuid=True),
            sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
            index=True,
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("response_body", sa.Text()),
        sa.Column("retry_in_seconds", sa.Integer()),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
    )


def _dam_tables() -> None:
    op.create_table(
        "delivery_targets",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "tenant_id", UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False
        ),
        sa.Column(
            "brand_id", UUID(as_uuid=True), sa.ForeignKey("brands.id", ondelete="CASCADE"), index=True, nullable=False
        ),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("config", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("credentials", sa.Text()),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "dam_pushes",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "tenant_id", UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False
        ),
        sa.Column(
            "campaign_id",
            UUID(as_uuid=True),
            sa.ForeignKey("campaigns.id", ondelete="CASCADE"),
            index=True,
            nullable=False,
        ),
        # SET NULL: deleting a target keeps its push history (kind s3 without a target reads "deleted")
        sa.Column(
            "target_id", UUID(as_uuid=True), sa.ForeignKey("delivery_targets.id", ondelete="SET NULL"), index=True
        ),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("leased_until", _TS),
        sa.Column("last_error", sa.Text()),
        sa.Column("objects", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", _TS),
    )
    op.create_index("ix_dam_pushes_due", "dam_pushes", ["status", "next_attempt_at"])


def upgrade() -> None:
    _endpoint_columns()
    _delivery_columns()
    op.add_column("campaigns", sa.Column("event_sequence", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("campaigns", sa.Column("push_urls", JSONB()))
    _dam_tables()


def downgrade() -> None:
    op.drop_table("dam_pushes")
    op.drop_table("delivery_targets")
    op.drop_column("campaigns", "push_urls")
    op.drop_column("campaigns", "event_sequence")
    op.drop_table("webhook_attempts")
    for column in ("replay_of", "leased_until"):
        op.drop_column("webhook_deliveries", column)
    for column in (
        "disabled_reason",
        "disabled_at",
        "failing_since",
        "previous_signing_key",
        "signing_key",
        "previous_secret_expires_at",
        "previous_secret",
    ):
        op.drop_column("webhook_endpoints", column)
