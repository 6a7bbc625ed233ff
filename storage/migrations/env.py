"""Alembic environment, run programmatically by storage.db.upgrade_to_head().

The Engine comes from `config.attributes["engine"]` (set by storage.db), or else from
`OMNIPATH_DATABASE_URL` / the default path, so operators can also run
``alembic -c storage/alembic.ini upgrade head``.
"""

from __future__ import annotations

from alembic import context

from storage.db import create_database_engine, resolve_url
from storage.models import Base

# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that makes app
# replicas starting together run the migrations one after another.
_MIGRATION_LOCK_KEY = 0x0A11_0D0B_0A7E


def run_migrations_offline() -> None:
    context.configure(
        url=resolve_url(),
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine")
    if engine is None:
        engine = create_database_engine(resolve_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite cannot ALTER most things; batch mode copies the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
