"""Synchronous connections: for content threads, operator tools and the CLI.

Large-object content cannot travel on the asynchronous pool: psycopg2
refuses ``lobject`` on asynchronous connections, and the server-side
alternative (``lo_put``/``lo_get`` with text-escaped bytea) moves about half
as many bytes per second as psycopg2's synchronous large-object calls. So
content travels on synchronous connections driven from a dedicated thread
pool, one connection per thread, taken from ``SyncConnectionPool``.

They survive a database restart too: a synchronous connection that died is
dropped, and every one opened before it, and opened afresh on next use.
"""

import contextlib
import queue
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
from psycopg2.extras import NamedTupleCursor

from pgblobs.db import queries, schema
from pgblobs.db.dsn import with_session_settings
from pgblobs.db.errors import connection_lost, translate
from pgblobs.db.queries import Row
from pgblobs.errors import DatabaseUnavailable

_T = TypeVar("_T")


class SyncConnection:
    """A psycopg2 connection used synchronously: by content threads, operator
    tools and the CLI. It runs named statements, returns rows with named fields, and
    owns its transactions: outside ``transaction()`` each statement commits
    on its own; inside, they commit together on leaving, or roll back."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        raw.autocommit = True

    @classmethod
    def connect(cls, dsn: str) -> "SyncConnection":
        return cls(psycopg2.connect(with_session_settings(dsn), cursor_factory=NamedTupleCursor))

    @classmethod
    def connect_at_head(cls, dsn: str) -> "SyncConnection":
        """A connection to a database whose schema is at head, else SchemaNotReady."""
        connection = cls.connect(dsn)
        try:
            schema.require_head(connection.schema_revision())
        except BaseException:
            connection.close()
            raise
        return connection

    def schema_revision(self) -> str | None:
        """The schema's alembic revision, or None when there is no schema."""
        try:
            row = self.fetch_one("schema_version")
        except psycopg2.errors.UndefinedTable:
            return None
        return None if row is None else row.version_num

    def fetch(self, name: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Every row of a named statement."""
        with self.raw.cursor() as cursor:
            cursor.execute(queries.SQL[name], params or {})
            return cursor.fetchall() if cursor.description else []

    def fetch_one(self, name: str, params: dict[str, Any] | None = None) -> Row | None:
        rows = self.fetch(name, params)
        return rows[0] if rows else None

    def execute(self, name: str, params: dict[str, Any] | None = None) -> int:
        """Run a named statement; the number of rows it touched."""
        with self.raw.cursor() as cursor:
            cursor.execute(queries.SQL[name], params or {})
            return cursor.rowcount

    @contextlib.contextmanager
    def transaction(
        self, snapshot: bool = False, commit: bool = True
    ) -> Iterator["SyncConnection"]:
        """Statements inside share one transaction (large objects need one),
        committed on leaving unless ``commit`` is false, rolled back on an
        error. ``snapshot``: REPEATABLE READ and read-only, so every statement
        sees the same snapshot."""
        if snapshot:
            self.raw.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
        else:
            self.raw.autocommit = False
        try:
            yield self
            if commit:
                self.raw.commit()
            else:
                self.raw.rollback()
        except BaseException:
            if not self.raw.closed:
                self.raw.rollback()
            raise
        finally:
            if not self.raw.closed:
                self.raw.set_session(isolation_level="DEFAULT", readonly="DEFAULT", autocommit=True)

    def large_object(self, oid: int = 0, mode: str = "rb") -> Any:
        """A large object (a new one for ``oid`` 0); only inside a transaction."""
        return self.raw.lobject(oid, mode)

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    @property
    def idle(self) -> bool:
        """Open, and in no transaction."""
        return (
            not self.raw.closed
            and self.raw.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        )

    def close(self) -> None:
        self.raw.close()


class SyncConnectionPool:
    """Idle SyncConnections, taken and returned by worker threads.

    Connections are stamped with the generation they were opened in; a loss
    seen anywhere starts a new generation, and older connections are closed
    rather than used, since they lost the same server.
    """

    def __init__(self, dsn: str, on_lost: Callable[[], None]) -> None:
        self._dsn = dsn
        self._on_lost = on_lost
        self._idle: queue.LifoQueue[tuple[int, SyncConnection]] = queue.LifoQueue()
        self._generation = 0

    def run(
        self,
        work: Callable[..., _T],
        *args: Any,
        retry: Callable[[], bool] | None = None,
    ) -> _T:
        """``work(connection, *args)``; when the connection turns out lost and
        ``retry()`` says nothing was done yet, once more on a fresh one."""
        generation, connection = self._take()
        try:
            return work(connection, *args)
        except psycopg2.Error as error:
            if not connection_lost(error):
                raise translate(error) from error
            self.lost()
            self._on_lost()
            if retry is None or not retry():
                raise translate(error) from error
        finally:
            self._give_back(generation, connection)
        return self.run(work, *args)

    def _take(self) -> tuple[int, SyncConnection]:
        while True:
            try:
                generation, connection = self._idle.get_nowait()
            except queue.Empty:
                break
            if generation == self._generation:
                return generation, connection
            connection.close()
        generation = self._generation
        try:
            connection = SyncConnection.connect(self._dsn)
        except psycopg2.OperationalError as error:
            raise DatabaseUnavailable("the database is unreachable; try again shortly") from error
        return generation, connection

    def _give_back(self, generation: int, connection: SyncConnection) -> None:
        if connection.closed:
            return
        if generation != self._generation or not connection.idle:
            # From before a loss, or failed half-way: its transaction must
            # not be handed on.
            connection.close()
            return
        self._idle.put((generation, connection))

    def lost(self) -> None:
        """The server went away: no connection opened before now is used again."""
        self._generation += 1
        self.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait()[1].close()
            except queue.Empty:
                return
