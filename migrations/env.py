"""Alembic environment: the URL comes from Settings (env or the embedded stack)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from shared.config import get_settings
from shared.db.models import Base
from shared.db.session import sqlalchemy_url

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=sqlalchemy_url(get_settings().db_url), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(sqlalchemy_url(get_settings().db_url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
