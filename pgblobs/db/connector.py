"""The database as the backend sees it: named statements on an asynchronous
pool, content work in threads on synchronous connections, and admission in
front of both. ``Database`` only joins those rooms (pool.py, sync.py,
admission.py; see the package's docstring), so its methods stay short.

Both kinds of connection survive a database restart. Meanwhile callers get
DatabaseUnavailable at once, as they do when more work waits for a
connection than ``max_waiting`` allows.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from pgblobs import settings
from pgblobs.db.admission import Admission
from pgblobs.db.dsn import with_session_settings, with_statement_timeout
from pgblobs.db.pool import ReconnectingPool
from pgblobs.db.queries import Row
from pgblobs.db.sync import SyncConnectionPool

_T = TypeVar("_T")


class Database:
    """A txpostgres pool for statements, a thread pool for large objects."""

    def __init__(
        self,
        reactor: Any,
        pool: ReconnectingPool,
        threadpool: ThreadPool,
        dsn: str,
        admission: Admission,
    ) -> None:
        self.reactor = reactor
        self.dsn = dsn  # with the statement timeout and keepalives, for connections of its own
        self._pool = pool
        self._threadpool = threadpool
        # A content connection that lost the server means the idle statement
        # connections probably did too: touch them now, from the reactor.
        self._sync = SyncConnectionPool(dsn, on_lost=lambda: reactor.callFromThread(pool.ping_idle))
        self._admission = admission

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
        dsn = with_session_settings(with_statement_timeout(dsn, int(statement_timeout * 1000)))
        # statement_timeout 0 lets a statement run for ever: so may the wait for it.
        deadline = (
            statement_timeout + settings.STATEMENT_DEADLINE_MARGIN
            if statement_timeout > 0
            else None
        )
        pool = await ReconnectingPool.open_at_head(reactor, deadline, dsn, pool_size)
        threadpool = ThreadPool(minthreads=0, maxthreads=pool_size, name="pgblobs-content")
        threadpool.start()
        if max_waiting is None:
            max_waiting = settings.WAITING_PER_CONNECTION * pool_size
        if max_transfers_per_user is None:
            max_transfers_per_user = settings.max_transfers_per_user(pool_size)
        admission = Admission(pool_size, max_waiting, max_transfers_per_user)
        return cls(reactor, pool, threadpool, dsn, admission)

    def fetch(self, name: str, params: dict[str, Any]) -> Deferred[list[Row]]:
        """Rows of a named statement, run on the txpostgres pool."""
        return defer.ensureDeferred(
            self._admission.statement(lambda: self._pool.fetch(name, params, lost=self._sync.lost))
        )

    def in_thread(
        self,
        work: Callable[..., _T],
        *args: Any,
        owner: str,
        retry: Callable[[], bool] | None = None,
    ) -> Deferred[_T]:
        """Run ``work(connection, *args)`` in a content thread for the user
        ``owner``, within their share (see Admission); a Deferred of its
        result. When the connection turns out lost, ``retry()`` (called in
        the thread) may ask for one more go."""
        return self._admission.transfer(
            owner,
            lambda: threads.deferToThreadPool(
                self.reactor, self._threadpool, self._sync.run, work, *args, retry=retry
            ),
        )

    def has_live_connection(self) -> bool:
        """Whether any statement connection is up (the server answers)."""
        return bool(self._pool.has_live_connection())

    def ping(self) -> Deferred[list[Row]]:
        return self.fetch("ping", {})

    def usage(self) -> dict[str, int]:
        """Statements and content transfers in flight (running or waiting)."""
        return self._admission.usage()

    def close(self) -> Deferred[None]:
        self._threadpool.stop()
        self._sync.close()
        return defer.maybeDeferred(self._pool.close)
