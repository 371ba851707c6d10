"""The connections to PostgreSQL, and the translation of database errors.

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

A link can also fall silent: the server stuck, or packets lost without a
word. Every connection has TCP keepalives and ``tcp_user_timeout``, and
every asynchronous statement a deadline (the statement timeout plus a
margin): one the server has not answered by then fails as unavailable, and
its connection is cut and reconnected, never reused while the statement may
still be pending.
"""

import contextlib
import os
import queue
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg2
from psycopg2 import errorcodes
from psycopg2.extensions import make_dsn, parse_dsn
from psycopg2.extras import NamedTupleCursor
from twisted.internet import defer, task, threads
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from txpostgres import reconnection, txpostgres

from pgblobs import settings
from pgblobs.db import queries, schema
from pgblobs.errors import BlobExists, DatabaseUnavailable, QuotaExceeded

# A row: a named tuple whose fields are the statement's column names
# (NamedTupleCursor costs a third of RealDictCursor on long listings).
Row = Any
_T = TypeVar("_T")

_QUOTA_EXCEEDED = "PB507"  # raised by the write functions (migrations/versions/0001, 0009)
_SERVER_GOING_AWAY = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now
_BUSY = {errorcodes.QUERY_CANCELED, errorcodes.TOO_MANY_CONNECTIONS}
# While a pool reconnects after an outage, a statement that met a connection
# still down waits this long in all for one that is back, in these steps.
_RECOVERY_WAIT = 2.0
_RECOVERY_STEP = 0.02
# Seconds a reconnection attempt may take before it is cut and tried again:
# libpq ignores connect_timeout on asynchronous connections.
_CONNECT_DEADLINE = 10.0


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` means the connection itself is gone."""
    if isinstance(
        error,
        (
            psycopg2.InterfaceError,
            txpostgres.RollbackFailed,
            internet_error.ConnectionLost,
            internet_error.ConnectionDone,
        ),
    ):
        return True
    if isinstance(error, psycopg2.OperationalError):
        code = error.pgcode
        return code is None or code.startswith("08") or code in _SERVER_GOING_AWAY
    return False


def translate(error: BaseException) -> BaseException:
    """The pgblobs error a database error stands for, or the error itself."""
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error):
        if code == _QUOTA_EXCEEDED:
            return QuotaExceeded(str(error.diag.message_primary))
        if code == errorcodes.UNIQUE_VIOLATION and error.diag.constraint_name == "blobs_live_key":
            return BlobExists("a live blob already has this id")
    if isinstance(error, reconnection.ConnectionDead) or connection_lost(error):
        return DatabaseUnavailable("the database is unavailable; try again shortly")
    if code in _BUSY:
        return DatabaseUnavailable("the database is too busy; try again shortly")
    return error


def with_statement_timeout(dsn: str, milliseconds: int) -> str:
    """``dsn`` whose sessions stop any statement running past ``milliseconds``,
    so a stuck query cannot hold a connection forever."""
    options = parse_dsn(dsn).get("options", "")
    return make_dsn(dsn, options=f"{options} -c statement_timeout={milliseconds}".strip())


def with_keepalives(dsn: str) -> str:
    """``dsn`` whose connections notice a link that stopped carrying packets
    within seconds (libpq ignores these on Unix-domain sockets), and name
    this code's revision unless the DSN names them (`db upgrade` reads it)."""
    return make_dsn(
        dsn,
        application_name=parse_dsn(dsn).get("application_name", schema.node_name()),
        keepalives=1,
        keepalives_idle=settings.KEEPALIVES_IDLE,
        keepalives_interval=settings.KEEPALIVES_INTERVAL,
        keepalives_count=settings.KEEPALIVES_COUNT,
        tcp_user_timeout=settings.TCP_USER_TIMEOUT * 1000,
    )


class NoAnswer(Exception):
    """The server did not answer within a deadline; the connection was cut."""


def cut(connection: txpostgres.Connection) -> None:
    """Hang up ``connection`` as a server that went away would: whatever is
    pending on it fails through txpostgres' own path for a lost connection,
    and its detector reconnects."""
    raw = connection.pollable()
    if raw is None or raw.closed:
        return
    try:
        # Shutting the socket down (not closing it) lets the reactor see it
        # end, so the cursor waiting on it is told and unregistered.
        with socket.socket(fileno=os.dup(raw.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        connection.close()  # not connected yet: nothing but the connect waits


def within_deadline(
    reactor: Any, seconds: float, connection: txpostgres.Connection, pending: Deferred[_T]
) -> Deferred[_T]:
    """``pending`` (an operation on ``connection``), or, when it has not
    answered within ``seconds``, NoAnswer once ``connection`` is cut."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        cut(connection)

    timer = reactor.callLater(seconds, expire)

    def settled(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if expired and isinstance(result, Failure):
            raise NoAnswer(f"no answer from the database within {seconds:g}s") from result.value
        return result

    return pending.addBoth(settled)


class Reconnector(reconnection.DeadConnectionDetector):
    """Reconnects one dead connection, backing off between attempts, and
    tells ``lost`` (if given) when it died and ``recovered`` when it is back;
    a pool's ``hurry`` cuts the wait short once another connection got
    through, since the server is evidently back."""

    def __init__(
        self,
        reactor: Any,
        recovered: Callable[["Reconnector"], None],
        lost: Callable[[Failure], None] | None = None,
    ) -> None:
        super().__init__(
            deathChecker=lambda failure: connection_lost(failure.value), reactor=reactor
        )
        self._recovered = recovered
        self._lost = lost
        self._nap: Deferred[None] | None = None
        self.stopped = False

    def startReconnecting(self, failure: Failure) -> None:
        if self._lost is not None:
            self._lost(failure)
        defer.ensureDeferred(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.0
        while not self.stopped:
            if delay:
                self._nap = task.deferLater(self.reactor, delay, lambda: None)
                try:
                    await self._nap
                except defer.CancelledError:
                    pass  # hurried
                self._nap = None
            try:
                await within_deadline(
                    self.reactor, _CONNECT_DEADLINE, self.reconnectable, self.reconnect()
                )
            except Exception:
                delay = min(max(2 * delay, 0.1), 2.0)
                continue
            self.connectionRecovered()
            self._recovered(self)
            return

    def hurry(self) -> None:
        if self._nap is not None:
            self._nap.cancel()


class _ReconnectingPool(txpostgres.ConnectionPool):
    """A txpostgres pool whose connections come back after the server does,
    and which hands out a live connection whenever it has one. Whatever it
    sends fails with NoAnswer past ``deadline`` seconds without an answer
    (None: waits as long as the server takes)."""

    def __init__(self, reactor: Any, deadline: float | None, *connargs: Any, **connkw: Any) -> None:
        self.reactor = reactor
        self.deadline = deadline
        super().__init__(None, *connargs, **connkw)

    def connectionFactory(self, reactor: Any, cooperator: Any) -> txpostgres.Connection:
        return txpostgres.Connection(
            reactor, cooperator, detector=Reconnector(reactor, self._one_recovered)
        )

    def _one_recovered(self, detector: Reconnector) -> None:
        # The server answers again: every other connection tries at once,
        # and those not known dead are checked, so none fails a request
        # for having lost the old server.
        for connection in self._everyone:
            if connection.detector is detector:
                continue
            if connection.detector.connectionIsDead:
                connection.detector.hurry()
            elif connection in self.connections:
                self.ping(connection)

    def start(self) -> Deferred[Any]:
        self._everyone = list(self.connections)
        return super().start()

    def has_live_connection(self) -> bool:
        return any(not c.detector.connectionIsDead for c in self._everyone)

    def _take(self) -> txpostgres.Connection:
        alive = [c for c in self.connections if not c.detector.connectionIsDead]
        connection = alive[0] if alive else next(iter(self.connections))
        self.connections.remove(connection)
        return connection

    def _within_deadline(
        self, connection: txpostgres.Connection, pending: Deferred[_T]
    ) -> Deferred[_T]:
        if self.deadline is None:
            return pending
        return within_deadline(self.reactor, self.deadline, connection, pending)

    def ping(self, connection: txpostgres.Connection) -> None:
        """Touch ``connection``, so a dead one starts reconnecting; failures
        are its detector's business."""
        self._within_deadline(connection, connection.runQuery(queries.SQL["ping"])).addErrback(
            lambda _: None
        )

    def _runQuery(self, *args: Any, **kwargs: Any) -> Deferred[list[Row]]:
        connection = self._take()
        return self._within_deadline(connection, connection.runQuery(*args, **kwargs)).addBoth(
            self._putBackAndPassthrough, connection
        )

    def _runOperation(self, *args: Any, **kwargs: Any) -> Deferred[None]:
        connection = self._take()
        return self._within_deadline(connection, connection.runOperation(*args, **kwargs)).addBoth(
            self._putBackAndPassthrough, connection
        )

    def close(self) -> None:
        for connection in self._everyone:
            connection.detector.stopped = True
            connection.detector = None  # closed on purpose: stay closed
            try:
                connection.close()
            except AttributeError:
                pass  # txpostgres cannot close a connection that never opened


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
        return cls(psycopg2.connect(with_keepalives(dsn), cursor_factory=NamedTupleCursor))

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


class _SyncConnections:
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


class Database:
    """A txpostgres pool for statements, a thread pool for large objects."""

    def __init__(
        self,
        reactor: Any,
        pool: _ReconnectingPool,
        threadpool: ThreadPool,
        dsn: str,
        pool_size: int,
        max_waiting: int,
        max_transfers_per_user: int,
    ) -> None:
        self.reactor = reactor
        self.dsn = dsn  # with the statement timeout and keepalives, for connections of its own
        self._pool = pool
        self._threadpool = threadpool
        self._sync = _SyncConnections(
            dsn, on_lost=lambda: reactor.callFromThread(self._ping_idle_statements)
        )
        # Content transfers hold a connection for as long as a client takes;
        # statements for milliseconds, so they may queue ten times deeper.
        self._transfer_capacity = pool_size + max_waiting
        self._statement_capacity = 10 * self._transfer_capacity
        self._statements = 0  # running or waiting for a connection
        self._transfers = 0
        self._max_transfers_per_user = max_transfers_per_user
        self._user_waiting = max(1, max_waiting // 2)
        # user -> their share, while the user has transfers
        self._shares: dict[str, defer.DeferredSemaphore] = {}

    @classmethod
    async def connect(
        cls,
        dsn: str,
        pool_size: int,
        reactor: Any = None,
        max_waiting: int | None = None,
        statement_timeout: float = settings.STATEMENT_TIMEOUT,
        max_transfers_per_user: int | None = None,
    ) -> "Database":
        if reactor is None:
            from twisted.internet import reactor
        dsn = with_keepalives(with_statement_timeout(dsn, int(statement_timeout * 1000)))
        # statement_timeout 0 lets a statement run for ever: so may the wait for it.
        deadline = (
            statement_timeout + settings.STATEMENT_DEADLINE_MARGIN
            if statement_timeout > 0
            else None
        )
        pool = _ReconnectingPool(
            reactor, deadline, dsn, min=pool_size, cursor_factory=NamedTupleCursor
        )
        try:
            await pool.start()
        except defer.FirstError as error:
            pool.close()
            error.subFailure.raiseException()
        try:
            try:
                rows = await pool.runQuery(queries.SQL["schema_version"])
            except psycopg2.errors.UndefinedTable:
                rows = []
            schema.require_head(rows[0].version_num if rows else None)
        except BaseException:
            pool.close()
            raise
        threadpool = ThreadPool(minthreads=0, maxthreads=pool_size, name="pgblobs-content")
        threadpool.start()
        if max_waiting is None:
            max_waiting = settings.WAITING_PER_CONNECTION * pool_size
        if max_transfers_per_user is None:
            max_transfers_per_user = settings.max_transfers_per_user(pool_size)
        return cls(reactor, pool, threadpool, dsn, pool_size, max_waiting, max_transfers_per_user)

    @staticmethod
    def _admit(in_flight: int, capacity: int) -> None:
        if in_flight >= capacity:
            raise DatabaseUnavailable("too many requests wait for the database; try again shortly")

    async def _statement(
        self, run: Callable[..., Awaitable[_T]], name: str, params: dict[str, Any]
    ) -> _T:
        self._admit(self._statements, self._statement_capacity)
        self._statements += 1
        try:
            resent, waited = False, 0.0
            while True:
                try:
                    return await run(queries.SQL[name], params)
                except NoAnswer as error:
                    # Sent, maybe even done, but never answered: never sent
                    # again, since waiting a second deadline helps nobody.
                    self._lost()
                    raise DatabaseUnavailable(f"{error}; try again shortly") from error
                except reconnection.ConnectionDead as error:
                    # Refused before anything was sent, so any statement may
                    # go again: while another connection is back, wait for it
                    # (briefly) rather than fail, since the server is there.
                    if not self._pool.has_live_connection() or waited >= _RECOVERY_WAIT:
                        raise translate(error) from error
                    await task.deferLater(self.reactor, _RECOVERY_STEP, lambda: None)
                    waited += _RECOVERY_STEP
                except (
                    psycopg2.Error,
                    txpostgres.RollbackFailed,
                    internet_error.ConnectionLost,
                    internet_error.ConnectionDone,
                ) as error:
                    if not connection_lost(error):
                        raise translate(error) from error
                    self._lost()
                    # A read may go again once on another connection, whether
                    # or not the lost one had sent it; a write may not.
                    if resent or name not in queries.READS:
                        raise translate(error) from error
                    resent = True
        except defer.CancelledError as error:
            # txpostgres turns "canceling statement" into CancelledError, and
            # we never cancel a statement ourselves: the statement timeout did.
            raise DatabaseUnavailable("a statement took too long; try again shortly") from error
        finally:
            self._statements -= 1

    def _lost(self) -> None:
        """A connection died: the server probably went away for all of them.
        Touch the idle statement connections now, so they reconnect in the
        background instead of failing the next requests one by one, and
        retire the content connections opened before."""
        self._sync.lost()
        self._ping_idle_statements()

    def _ping_idle_statements(self) -> None:
        for connection in list(self._pool.connections):
            if not connection.detector.connectionIsDead:
                self._pool.ping(connection)

    def fetch(self, name: str, params: dict[str, Any]) -> Deferred[list[Row]]:
        """Rows of a named statement, run on the txpostgres pool."""
        return defer.ensureDeferred(self._statement(self._pool.runQuery, name, params))

    def execute(self, name: str, params: dict[str, Any]) -> Deferred[None]:
        """Run a named statement that returns no rows, on the txpostgres pool."""
        return defer.ensureDeferred(self._statement(self._pool.runOperation, name, params))

    def in_thread(
        self,
        work: Callable[..., _T],
        *args: Any,
        owner: str,
        retry: Callable[[], bool] | None = None,
    ) -> Deferred[_T]:
        """Run ``work(connection, *args)`` in a content thread for the user
        ``owner``; a Deferred of its result. When the connection turns out
        lost, ``retry()`` (called in the thread) may ask for one more go.

        A user runs at most ``max_transfers_per_user`` transfers at once; the rest wait
        their turn, so one user's stalled transfers leave the other content
        connections free. A user may fill at most half of the waiting room
        (``max_waiting``); past it, or past the whole of it, DatabaseUnavailable.
        """
        share = self._shares.get(owner)
        if share is None:
            share = self._shares[owner] = defer.DeferredSemaphore(self._max_transfers_per_user)
        try:
            self._admit(self._transfers, self._transfer_capacity)
            self._admit(len(share.waiting), self._user_waiting)
        except DatabaseUnavailable:
            return defer.fail()
        self._transfers += 1
        done = share.run(
            threads.deferToThreadPool,
            self.reactor,
            self._threadpool,
            self._sync.run,
            work,
            *args,
            retry=retry,
        )

        def finished(result: _T) -> _T:
            self._transfers -= 1
            if share.tokens == share.limit and not share.waiting:
                self._shares.pop(owner, None)
            return result

        return done.addBoth(finished)

    def has_live_connection(self) -> bool:
        """Whether any statement connection is up (the server answers)."""
        return bool(self._pool.has_live_connection())

    def ping(self) -> Deferred[list[Row]]:
        return self.fetch("ping", {})

    def usage(self) -> dict[str, int]:
        """Statements and content transfers in flight (running or waiting)."""
        return {"statements": self._statements, "content": self._transfers}

    def close(self) -> Deferred[None]:
        self._threadpool.stop()
        self._sync.close()
        return defer.maybeDeferred(self._pool.close)
