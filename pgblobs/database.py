"""The connections of one backend, and the translation of database errors.

Metadata statements go through a txpostgres pool (asynchronous, no threads).
Large-object content cannot: psycopg2 refuses ``lobject`` on asynchronous
connections, and the server-side alternative (``lo_put``/``lo_get`` with
text-escaped bytea) moves about half as many bytes per second as psycopg2's
synchronous large-object calls. So content travels on synchronous connections
driven from a dedicated thread pool, one connection per thread.
"""
import queue

import psycopg2
from psycopg2 import errorcodes
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool
from txpostgres import txpostgres

from pgblobs import queries, schema
from pgblobs.errors import BlobExists, QuotaExceeded

_QUOTA_EXCEEDED = "PB507"  # raised by pgblobs.put_blob (migrations/versions/0001)


def translate(error):
    """The pgblobs error a psycopg2 error stands for, or the error itself."""
    code = getattr(error, "pgcode", None)
    if code == _QUOTA_EXCEEDED:
        return QuotaExceeded(str(error.diag.message_primary))
    if code == errorcodes.UNIQUE_VIOLATION and error.diag.constraint_name == "blobs_live_key":
        return BlobExists("a live blob already has this id")
    return error


def connect_sync(dsn):
    """A plain psycopg2 connection for operator tools, once the schema is at head."""
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            present = queries.execute(cursor, "schema_present", {}).fetchone()[0]
            current = None
            if present:
                row = queries.execute(cursor, "schema_version", {}).fetchone()
                current = row[0] if row else None
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
            raise translate(error) from error
        finally:
            self._give_back(connection)

    def _take(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            connection = psycopg2.connect(self._dsn)
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

    def __init__(self, reactor, pool, threadpool, sync_connections):
        self._reactor = reactor
        self._pool = pool
        self._threadpool = threadpool
        self._sync = sync_connections
        self._statements_running = 0

    @classmethod
    async def connect(cls, dsn, pool_size, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        pool = txpostgres.ConnectionPool(None, dsn, min=pool_size)
        try:
            await pool.start()
        except defer.FirstError as error:
            pool.close()
            error.subFailure.raiseException()
        try:
            present = await queries.fetch(pool, "schema_present", {})
            current = None
            if present[0][0]:
                versions = await queries.fetch(pool, "schema_version", {})
                current = versions[0][0] if versions else None
            schema.require_head(current)
        except BaseException:
            pool.close()
            raise
        threadpool = ThreadPool(minthreads=0, maxthreads=pool_size, name="pgblobs-content")
        threadpool.start()
        return cls(reactor, pool, threadpool, _SyncConnections(dsn))

    @defer.inlineCallbacks
    def fetch(self, name, params):
        """Rows of a named statement, run on the txpostgres pool."""
        self._statements_running += 1
        try:
            rows = yield queries.fetch(self._pool, name, params)
        except psycopg2.Error as error:
            raise translate(error) from error
        finally:
            self._statements_running -= 1
        return rows

    @defer.inlineCallbacks
    def execute(self, name, params):
        """Run a named statement that returns no rows, on the txpostgres pool."""
        self._statements_running += 1
        try:
            yield self._pool.runOperation(queries.SQL[name], params)
        except psycopg2.Error as error:
            raise translate(error) from error
        finally:
            self._statements_running -= 1

    def in_thread(self, work, *args):
        """Run ``work(connection, *args)`` in a content thread; a Deferred of its result."""
        return threads.deferToThreadPool(
            self._reactor, self._threadpool, self._sync.run, work, *args)

    def ping(self):
        return self.fetch("ping", {})

    def usage(self):
        """Statements in flight on the pool; content transfers holding a connection."""
        return {"statements": self._statements_running,
                "content": len(self._threadpool.working)}

    def close(self):
        self._threadpool.stop()
        self._sync.close()
        return defer.maybeDeferred(self._pool.close)
