"""The database schema: alembic's head, bringing a database to it, checking it.

A database reaches the head one of two ways. An empty one gets schema.sql
(the current schema in one file) and is stamped at the head, in one
transaction; one that has a schema runs the migrations it lacks
(migrations/versions/, each a delta; tests/test_schema_file.py keeps the two
ways equal).

Upgrades happen while nodes serve (README, "Upgrading a cluster"):

- A function whose meaning changes gets a new versioned name (``_v2``,
  ``_v3``); the old one keeps working until a later revision drops it, so
  nodes of the previous release keep serving during the upgrade.
- A function may be dropped only once no supported code revision calls it;
  the revision that drops it names, as ``code_floor``, the oldest code
  revision that still works after it. Nodes name themselves
  ``pgblobs REVISION`` (their ``application_name``), so ``upgrade`` refuses
  such a revision while older nodes are connected.
- Every migration runs under ``LOCK_TIMEOUT_SECONDS`` (migrations/env.py): one
  that cannot get a lock fails and says so, rather than queueing every node's
  statements behind it; an index on a big table is built CONCURRENTLY.
- One upgrade at a time (an advisory lock), and never of a database at a
  revision this code does not know (a newer pgblobs upgraded it).
"""

import contextlib
import functools
from collections.abc import Iterator
from importlib import resources
from typing import Any

import psycopg2
import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.pool import NullPool

from pgblobs.errors import SchemaNotReady, UpgradeRefused

UPGRADE_HINT = "run `pgblobs db upgrade`"
SCHEMA = "pgblobs"

# Long enough for any lock a node's own statements hold; short enough that
# the nodes' statements queued behind a waiting migration barely notice.
LOCK_TIMEOUT_SECONDS = 5

# How a pgblobs node's sessions name themselves (followed by its revision),
# and how an upgrade's own sessions do.
NODE_PREFIX = "pgblobs "
UPGRADER = "pgblobs db upgrade"

_UPGRADE_LOCK_KEY = "hashtextextended('pgblobs.db upgrade', 0)"


def alembic_config(dsn: str | None = None) -> Config:
    """Alembic's configuration for the migrations shipped in the package
    (the repository's alembic.ini names the same directory, for `alembic`)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("pgblobs.migrations")))
    if dsn:
        config.attributes["dsn"] = dsn
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str | None:
    return _scripts().get_current_head()


def revisions() -> list[str]:
    """Every revision, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


def node_name() -> str:
    """The ``application_name`` of this code's database sessions."""
    return f"{NODE_PREFIX}{head_revision()}"


def schema_file() -> str:
    """schema.sql: the schema at the head revision."""
    return resources.files("pgblobs.db").joinpath("schema.sql").read_text()


def upgrade(dsn: str, revision: str = "head") -> str:
    """Bring the database at ``dsn`` to ``revision``, or raise UpgradeRefused
    when that is unsafe now; return the revision it is at."""
    scripts = _scripts()
    with _upgrade_session(dsn) as control:
        current = _current_revision(control)
        _refuse_unknown(scripts, current)
        try:
            target = scripts.get_revision(revision)
        except CommandError as error:
            raise UpgradeRefused(f"no such revision: {revision} ({error})") from error
        if current is None and target is not None and target.revision == head_revision():
            with _refusing_lock_waits(control):
                _load_schema_file(dsn, scripts)
        else:
            pending = list(scripts.iterate_revisions(revision, current or "base"))
            _refuse_old_nodes(control, current, pending)
            with _refusing_lock_waits(control):
                command.upgrade(alembic_config(dsn), revision)
        return _current_revision(control) or "base"


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


@contextlib.contextmanager
def _upgrade_session(dsn: str) -> Iterator[Any]:
    """A session that holds the upgrade lock while the upgrade runs (the
    migrations run on alembic's own connection)."""
    control = psycopg2.connect(dsn, application_name=UPGRADER)
    control.autocommit = True
    try:
        if not _fetch(control, f"SELECT pg_try_advisory_lock({_UPGRADE_LOCK_KEY})")[0][0]:
            others = _sessions(control, "application_name = %(upgrader)s", upgrader=UPGRADER)
            raise UpgradeRefused(
                "another `pgblobs db upgrade` is running on this database"
                f"{_listing(others)}; nothing was done: run this again once it has ended"
            )
        yield control
    finally:
        control.close()


def _current_revision(control: Any) -> str | None:
    try:
        rows = _fetch(control, f"SELECT version_num FROM {SCHEMA}.alembic_version")
    except psycopg2.errors.UndefinedTable:
        return None
    return rows[0][0] if rows else None


def _refuse_unknown(scripts: ScriptDirectory, current: str | None) -> None:
    if current is None:
        return
    try:
        scripts.get_revision(current)
    except CommandError:
        raise UpgradeRefused(
            f"the database is at revision {current}, which this pgblobs does not know (it "
            f"knows revisions up to {head_revision()}): a newer pgblobs upgraded it. Nothing "
            "was done; upgrade with that pgblobs or a newer one, never back with this one"
        ) from None


def _load_schema_file(dsn: str, scripts: ScriptDirectory) -> None:
    """schema.sql and the head's stamp, in one transaction: all or nothing."""
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(dsn, application_name=UPGRADER),
        poolclass=NullPool,
    )
    try:
        with engine.begin() as connection:
            cursor = connection.connection.cursor()
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
            cursor.execute(schema_file())  # the DBAPI's own: no parameters, % is literal
            cursor.close()
            context = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
            context.stamp(scripts, "head")
    finally:
        engine.dispose()


def _refuse_old_nodes(control: Any, current: str | None, pending: list[Script]) -> None:
    """Refuse the first pending revision whose ``code_floor`` is above the code
    of a connected node. A node names its revision; one that does not (older
    code) runs the revision the database is at, since a node starts only at
    its head: any other session then counts as such a node while the
    database is below the floor."""
    order = {revision: position for position, revision in enumerate(revisions())}
    for script in reversed(pending):
        floor = getattr(script.module, "code_floor", None)
        if floor is None:
            continue
        unnamed_are_old = current is not None and order[current] < order[floor]
        older = [
            session
            for session in _sessions(control, "application_name <> %(upgrader)s", upgrader=UPGRADER)
            if _older_than(session[1], order, order[floor], unnamed_are_old)
        ]
        if older:
            raise UpgradeRefused(
                f"revision {script.revision} removes what code before revision {floor} calls, "
                f"and these sessions may be nodes running such code{_listing(older)}. Nothing "
                f"was done: upgrade to revision {script.down_revision} first (`pgblobs db upgrade "
                f"--revision {script.down_revision}`), roll every node to a pgblobs of revision "
                f"{floor} or later, then upgrade again"
            )


def _older_than(
    application_name: str, order: dict[str, int], floor: int, unnamed_are_old: bool
) -> bool:
    if not application_name.startswith(NODE_PREFIX):
        return unnamed_are_old
    revision = application_name.removeprefix(NODE_PREFIX)
    return revision in order and order[revision] < floor


@contextlib.contextmanager
def _refusing_lock_waits(control: Any) -> Iterator[None]:
    """A lock_timeout becomes UpgradeRefused, naming the long transactions."""
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, psycopg2.Error) as error:
        if not isinstance(getattr(error, "orig", error), psycopg2.errors.LockNotAvailable):
            raise
        holders = _sessions(
            control,
            "xact_start < now() - make_interval(secs => %(seconds)s)",
            seconds=LOCK_TIMEOUT_SECONDS,
        )
        current = _current_revision(control) or "base"
        raise UpgradeRefused(
            f"the upgrade from revision {current} could not take a lock within "
            f"{LOCK_TIMEOUT_SECONDS} s: long transactions hold it{_listing(holders)}. The "
            f"revision that waited was rolled back and the database stays at {current}: try "
            "again once they have ended"
        ) from None


def _sessions(control: Any, condition: str, **params: object) -> list[tuple[Any, ...]]:
    """Other client sessions of this database that meet ``condition``: pid,
    application_name, client address, start of the session."""
    return _fetch(
        control,
        "SELECT pid, application_name, coalesce(host(client_addr), 'local'), backend_start "
        "FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        f"AND {condition} ORDER BY pid",
        params,
    )


def _listing(sessions: list[tuple[Any, ...]]) -> str:
    return "".join(
        f"\n  pid {pid} {name or '(no application_name)'!r} from {address}, connected since "
        f"{started:%Y-%m-%d %H:%M:%S}"
        for pid, name, address, started in sessions
    )


def _fetch(control: Any, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
    with control.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()
