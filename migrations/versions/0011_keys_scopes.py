"""API keys: names, scopes, last use, expiry (rotation overlap) (part K-keys).

Keys issued before this migration keep working exactly as before: they are named "default" and get
every scope (read, write, admin), never expire, and have not been used yet as far as the table knows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("name", sa.String(100), nullable=False, server_default="default"))
    op.add_column(
        "api_keys",
        sa.Column("scopes", ARRAY(sa.String(10)), nullable=False, server_default="{read,write,admin}"),
    )
    op.add_column("api_keys", sa.Column("last_used_at", _TS, nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", _TS, nullable=True))


def downgrade() -> None:
    for column in ("expires_at", "last_used_at", "scopes", "name"):
        op.drop_column("api_keys", column)
