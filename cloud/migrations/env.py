"""Alembic environment: the URL comes from the caller's config (see cloud.core.db.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

import cloud.tables  # noqa: F401  (registers the tables on Base.metadata)
from cloud.core.db import Base

config = context.config
connection = config.attributes.get("connection")


def _run(conn: Connection) -> None:
    context.configure(
        connection=conn,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        _run(conn)
