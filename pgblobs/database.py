"""The connections of one backend, and the translation of database errors.

Metadata statements go through a txpostgres pool (asynchronous, no threads).
Large-object content cannot: psycopg2 refuses ``lobject`` on asynchronous
connections, and the server-side alternative (``lo_put``/``lo_get`` with
text-escaped bytea) moves about half as many bytes per second as psycopg2's
synchronous large-object calls. So content travels on synchronous connections
driven from a dedicated thread pool, one connection per thread.

Both kinds survive a database restart: a txpostgres connection that dies is
reconnected in the background (txpostgres' own pool never replaces one), a
synchronous one is dropped and opened afresh on next use. Meanwhile callers
get DatabaseUnavailable at once, as they do when more work waits for a
connection than ``max_waiting`` allows.
"""
import queue

import psycopg2
from psycopg2 import errorcodes
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer, error as internet_error, threads
from twisted.python.threadpool import ThreadPool
from txpostgres import reconnection, retrying, txpostgres

from pgblobs import queries, schema
from pgblobs.errors import BlobExists, DatabaseUnavailable, QuotaExceeded

_QUOTA_EXCEEDED = "PB507"  # raised by pgblobs.put_blob (migrations/versions/0001)
_SERVER_GOING_AWAY = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now
_BUSY = {errorcodes.QUERY_CANCELED, errorcodes.TOO_MANY_CONNECTIONS}
STATEMENT_TIMEOUT_MS = 30_000


def connection_lost(error):
    """Whether ``error`` means the connection itself is gone."""
    if isinstance(error, (psycopg2.InterfaceError, txpostgres.RollbackFailed,
                          internet_error.ConnectionLost, internet_error.ConnectionDone)):
        return True
    if isinstance(error, psycopg2.OperationalError):
        code = error.pgcode
        return code is None or code.startswith("08") or code in _SERVER_GOING_AWAY
    return False


def translate(error):
    """The pgblobs error a database error stands for, or the error itself."""
    code = getattr(error, "pgcode", None)
    if code == _QUOTA_EXCEEDED:
        return QuotaExceeded(str(error.diag.message_primary))
    if code == errorcodes.UNIQUE_VIOLATION and error.diag.constraint_name == "blobs_live_key":
        return BlobExists("a live blob already has this id")
    if isinstance(error, reconnection.ConnectionDead) or connection_lost(error):
        return DatabaseUnavailable("the database is unavailable; try again shortly")
    if code in _BUSY:
        return DatabaseUnavailable("the database is too busy; try again shortly")
    return error


def with_statement_timeout(dsn, milliseconds):
    """``dsn`` whose sessions stop any statement running past ``milliseconds``,
    so a stuck query cannot hold a connection forever."""
    options = parse_dsn(dsn).get("options", "")
    return make_dsn(dsn, options=f"{options} -c statement_timeout={milliseconds}".strip())


def _reconnect_delays():
    return retrying.simpleBackoffIterator(initialDelay=0.2, maxDelay=5.0, factor=2.0,
                                          maxRetries=0, now=True)


def _reconnecting_connection(reactor, cooperator):
    detector = reconnection.DeadConnectionDetector(
        deathChecker=lambda failure: connection_lost(failure.value),
        reconnectionIterator=_reconnect_delays, reactor=reactor)
    return txpostgres.Connection(reactor, cooperator, detector=detector)


class _ReconnectingPool(txpostgres.ConnectionPool):
    connectionFactory = staticmethod(_reconnecting_connection)

    def close(self):
        for connection in self.connections:
            connection.detector = None  # closed on purpose: stay closed
            try:
                connection.close()
            except AttributeError:
                pass  # txpostgres cannot close a connection that never opened


def _revision(rows):
    return rows[0][0] if rows else None


def connect_sync(dsn):
    """A plain psycopg2 connection for operator tools, once the schema is at head."""
    connection = psycopg2.connect(dsn)
    try:
        try:
            with connection.cursor() as cursor:
                current = _revision(queries.execute(cursor, "schema_version", {}).fetchall())
        except psycopg2.errors.UndefinedTable:
            current = None
        connection.rollback()
        schema.require_head(current)
    except BaseException:
        connection.close()
        raise
    return connection


class _SyncConnections:
    """Idle psycopg2 connections, taken and returned by worker threads."""

    def __init__(self, dsn):
        self._dsn = dsn
        self._idle = queue.LifoQueue()

    def run(self, work, *args):
        connection = self._take()
        try:
            return work(connection, *args)
        except psycopg2.Error as error:
            if connection_lost(error):
                self.close()  # the idle ones lost the same server
            raise translate(error) from error
        finally:
            self._give_back(connection)

    def _take(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            try:
                connection = psycopg2.connect(self._dsn)
            except psycopg2.OperationalError as error:
                raise DatabaseUnavailable("the database is unreachable; try again shortly") from error
            connection.autocommit = True
            return connection

    def _give_back(self, connection):
        if connection.closed:
            return
        if connection.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            # Work that failed half-way must not hand its transaction on.
            connection.close()
            return
        self._idle.put(connection)

    def close(self):
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class Database:
    """A txpostgres pool for statements, a thread pool for large objects."""

    def __init__(self, reactor, pool, threadpool, sync_connections, pool_size, max_waiting):
        self._reactor = reactor
        self._pool = pool
        self._threadpool = threadpool
        self._sync = sync_connections
        # Content transfers hold a connection for as long as a client takes;
        # statements for milliseconds, so they may queue ten times deeper.
        self._transfer_capacity = pool_size + max_waiting
        self._statement_capacity = 10 * self._transfer_capacity
        self._statements = 0  # running or waiting for a connection
        self._transfers = 0

    @classmethod
    async def connect(cls, dsn, pool_size, reactor=None, max_waiting=None,
                      statement_timeout_ms=STATEMENT_TIMEOUT_MS):
        if reactor is None:
            from twisted.internet import reactor
        dsn = with_statement_timeout(dsn, statement_timeout_ms)
        pool = _ReconnectingPool(None, dsn, min=pool_size)
        try:
            await pool.start()
        except defer.FirstError as error:
            pool.close()
            error.subFailure.raiseException()
        try:
            try:
                current = _revision(await queries.fetch(pool, "schema_version", {}))
            except psycopg2.errors.UndefinedTable:
                current = None
            schema.require_head(current)
        except BaseException:
            pool.close()
            raise
        threadpool = ThreadPool(minthreads=0, maxthreads=pool_size, name="pgblobs-content")
        threadpool.start()
        if max_waiting is None:
            max_waiting = 32 * pool_size
        return cls(reactor, pool, threadpool, _SyncConnections(dsn), pool_size, max_waiting)

    @staticmethod
    def _admit(in_flight, capacity):
        if in_flight >= capacity:
            raise DatabaseUnavailable("too many requests wait for the database; try again shortly")

    async def _statement(self, run, name, params):
        self._admit(self._statements, self._statement_capacity)
        self._statements += 1
        try:
            # A connection known to be dead refuses at once, before sending
            # anything, so trying another one is safe even for a write.
            for _ in range(self._pool.min):
                try:
                    return await run(queries.SQL[name], params)
                except reconnection.ConnectionDead:
                    continue
            return await run(queries.SQL[name], params)
        except (psycopg2.Error, reconnection.ConnectionDead, txpostgres.RollbackFailed,
                internet_error.ConnectionLost, internet_error.ConnectionDone) as error:
            if connection_lost(error):
                self._probe_idle_connections()
            raise translate(error) from error
        except defer.CancelledError as error:
            # txpostgres turns "canceling statement" into CancelledError, and
            # we never cancel a statement ourselves: the statement timeout did.
            raise DatabaseUnavailable("a statement took too long; try again shortly") from error
        finally:
            self._statements -= 1

    def _probe_idle_connections(self):
        """One connection died: the server probably went away for all of them.
        Touch the idle ones now, so they reconnect in the background instead
        of failing the next requests one by one."""
        for connection in list(self._pool.connections):
            connection.runQuery(queries.SQL["ping"]).addErrback(lambda _: None)

    def fetch(self, name, params):
        """Rows of a named statement, run on the txpostgres pool."""
        return defer.ensureDeferred(self._statement(self._pool.runQuery, name, params))

    def execute(self, name, params):
        """Run a named statement that returns no rows, on the txpostgres pool."""
        return defer.ensureDeferred(self._statement(self._pool.runOperation, name, params))

    def in_thread(self, work, *args):
        """Run ``work(connection, *args)`` in a content thread; a Deferred of its result."""
        try:
            self._admit(self._transfers, self._transfer_capacity)
        except DatabaseUnavailable:
            return defer.fail()
        self._transfers += 1
        done = threads.deferToThreadPool(
            self._reactor, self._threadpool, self._sync.run, work, *args)

        def finished(result):
            self._transfers -= 1
            return result
        return done.addBoth(finished)

    def ping(self):
        return self.fetch("ping", {})

    def usage(self):
        """Statements and content transfers in flight (running or waiting)."""
        return {"statements": self._statements, "content": self._transfers}

    def close(self):
        self._threadpool.stop()
        self._sync.close()
        return defer.maybeDeferred(self._pool.close)
