"""Alembic environment: pgblobs keeps every object, its version table included,
in the ``pgblobs`` schema so it can share a database with other applications."""

from alembic import context
from sqlalchemy import create_engine, text

from pgblobs import settings
from pgblobs.db.schema import LOCK_TIMEOUT_SECONDS, SCHEMA

# Every migration waits at most this long for a lock, so one that cannot get
# its lock fails (and is rolled back) instead of queueing every node's
# statements behind it (pgblobs/db/schema.py).
LOCK_TIMEOUT = f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'"


def _dsn():
    dsn = (
        context.config.attributes.get("dsn")
        or context.get_x_argument(as_dictionary=True).get("dsn")
        or settings.dsn_from_environment()
    )
    if not dsn:
        raise SystemExit(f"no database given: pass -x dsn=... or set {settings.DSN_VARIABLE}")
    return dsn


def _engine(dsn):
    # Both libpq forms ("host=... dbname=..." and "postgresql://...") reach
    # psycopg2 unchanged this way; SQLAlchemy only needs to know the dialect.
    import psycopg2

    return create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn))


def run_offline():
    context.configure(
        dialect_name="postgresql",
        version_table_schema=SCHEMA,
        literal_binds=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.execute(LOCK_TIMEOUT)
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        context.run_migrations()


def run_online():
    engine = _engine(_dsn())
    with engine.connect() as connection:
        # The version table lives in our schema, so the schema must exist
        # before alembic looks for it.
        connection.execute(text(LOCK_TIMEOUT))
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        connection.commit()
        context.configure(
            connection=connection,
            version_table_schema=SCHEMA,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
