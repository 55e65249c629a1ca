"""Media library search: full-text column, embedding spaces of any dimension, filter columns.

- assets.search_tsv: a generated tsvector (title and tags weight A, attribute values B,
  description C) with a GIN index, for the keyword part of hybrid search.
- assets.source_url: where an imported asset was fetched from.
- asset_embeddings.embedding becomes an unconstrained `vector`, so spaces of different
  dimensions (MiniLM 384-d text, CLIP image) share the table; each space gets its own partial
  HNSW index over `embedding::halfvec(dim)` (see shared/search.py: ensure_space_index).
- asset_embeddings gets copies of the asset's filter columns (kind, brand_id, tags) so that
  filters are evaluated inside the HNSW index scan (pgvector iterative scans), not after it.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Same naming rule as shared.search.space_index_name (copied: a migration must not change with app code).
DEFAULT_INDEX = "ix_emb_hnsw_" + hashlib.sha1(DEFAULT_TEXT_MODEL.encode()).hexdigest()[:12]

# array_to_string is only STABLE (element output functions could change); for varchar it is not,
# and a generated column needs an IMMUTABLE expression, hence this small wrapper.
JOIN_FUNCTION = """
CREATE OR REPLACE FUNCTION onbrand_join_tags(tags varchar[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT coalesce(array_to_string(tags, ' '), '') $$
"""

SEARCH_TSV = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', onbrand_join_tags(tags)), 'A') || "
    "setweight(jsonb_to_tsvector('english', coalesce(attributes, '{}'::jsonb), '[\"string\", \"numeric\"]'), 'B') || "
    "setweight(to_tsvector('english', coalesce(description, '')), 'C')"
)


def upgrade() -> None:
    op.execute(JOIN_FUNCTION)
    op.add_column("assets", sa.Column("source_url", sa.String(2000), nullable=True))
    op.add_column("assets", sa.Column("search_tsv", postgresql.TSVECTOR(), sa.Computed(SEARCH_TSV, persisted=True)))
    op.create_index("ix_assets_search_tsv", "assets", ["search_tsv"], postgresql_using="gin")
    op.create_index("ix_assets_tags", "assets", ["tags"], postgresql_using="gin")
    op.create_index("ix_assets_tenant_kind_created", "assets", ["tenant_id", "kind", "created_at"])

    op.drop_index("ix_asset_embeddings_hnsw", table_name="asset_embeddings")
    op.execute("ALTER TABLE asset_embeddings ALTER COLUMN embedding TYPE vector")
    op.add_column("asset_embeddings", sa.Column("modality", sa.String(10), nullable=False, server_default="text"))
    op.add_column("asset_embeddings", sa.Column("kind", sa.String(20), nullable=True))
    op.add_column("asset_embeddings", sa.Column("brand_id", sa.Uuid(), nullable=True))
    op.add_column("asset_embeddings", sa.Column("tags", postgresql.ARRAY(sa.String(100)), nullable=True))
    op.execute(
        "UPDATE asset_embeddings e SET kind = a.kind, brand_id = a.brand_id, tags = a.tags "
        "FROM assets a WHERE a.id = e.asset_id"
    )
    op.alter_column("asset_embeddings", "kind", nullable=False)
    op.create_index("ix_asset_embeddings_tenant_model", "asset_embeddings", ["tenant_id", "model"])
    # Selective filters (a brand's products: ~1 % of a tenant) are cheaper as an exact scan of their rows.
    op.create_index("ix_asset_embeddings_filters", "asset_embeddings", ["tenant_id", "brand_id", "kind"])
    op.execute(
        f"CREATE INDEX IF NOT EXISTS {DEFAULT_INDEX} ON asset_embeddings "
        "USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops) "
        f"WHERE model = '{DEFAULT_TEXT_MODEL}'"
    )


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {DEFAULT_INDEX}")
    op.drop_index("ix_asset_embeddings_filters", table_name="asset_embeddings")
    op.drop_index("ix_asset_embeddings_tenant_model", table_name="asset_embeddings")
    for column in ("tags", "brand_id", "kind", "modality"):
        op.drop_column("asset_embeddings", column)
    op.execute("DELETE FROM asset_embeddings WHERE vector_dims(embedding) <> 384")
    op.execute("ALTER TABLE asset_embeddings ALTER COLUMN embedding TYPE vector(384)")
    op.create_index(
        "ix_asset_embeddings_hnsw",
        "asset_embeddings",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.drop_index("ix_assets_tenant_kind_created", table_name="assets")
    op.drop_index("ix_assets_tags", table_name="assets")
    op.drop_index("ix_assets_search_tsv", table_name="assets")
    op.drop_column("assets", "search_tsv")
    op.drop_column("assets", "source_url")
    op.execute("DROP FUNCTION IF EXISTS onbrand_join_tags(varchar[])")
