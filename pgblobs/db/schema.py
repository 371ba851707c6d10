"""The database schema's version: alembic's head, upgrading to it, checking it.

migrations/ owns the schema; this module only drives alembic and compares the
revision a database is at with the revision this code was written for.
"""

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from pgblobs.errors import SchemaNotReady

UPGRADE_HINT = "run `pgblobs db upgrade`"


def alembic_config(dsn: str | None = None) -> Config:
    """Alembic's configuration for the migrations shipped in the package
    (the repository's alembic.ini names the same directory, for `alembic`)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("pgblobs.migrations")))
    if dsn:
        config.attributes["dsn"] = dsn
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(dsn: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(alembic_config(dsn), revision)


def require_head(current: str | None) -> None:
    """Raise SchemaNotReady unless ``current`` (None: no schema) is the head."""
    head = head_revision()
    if current is None:
        raise SchemaNotReady(f"the pgblobs schema is missing from this database: {UPGRADE_HINT}")
    if current != head:
        raise SchemaNotReady(
            f"the pgblobs schema is at revision {current}, this pgblobs needs {head}: "
            f"{UPGRADE_HINT}"
        )
