"""The asynchronous statement pool: txpostgres connections that come back
after the server does, and statements that never wait for ever.

A txpostgres connection that dies is reconnected in the background
(txpostgres' own pool never replaces one); meanwhile its statements fail as
unavailable at once, or wait briefly for another connection that is back.

A link can also fall silent: the server stuck, or packets lost without a
word. Every asynchronous statement has a deadline (the statement timeout
plus a margin): one the server has not answered by then fails as
unavailable, and its connection is cut and reconnected, never reused while
the statement may still be pending.
"""

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
from psycopg2.extras import NamedTupleCursor
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

from pgblobs.db import queries, schema
from pgblobs.db.errors import STATEMENT_FAILED, NoAnswer, connection_lost, translate
from pgblobs.db.queries import Row
from pgblobs.errors import DatabaseUnavailable

_T = TypeVar("_T")

# While a pool reconnects after an outage, a statement that met a connection
# still down waits this long in all for one that is back, in these steps.
_RECOVERY_WAIT = 2.0
_RECOVERY_STEP = 0.02
# Seconds a reconnection attempt may take before it is cut and tried again:
# libpq ignores connect_timeout on asynchronous connections.
_CONNECT_DEADLINE = 10.0


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


class ReconnectingPool(txpostgres.ConnectionPool):
    """A txpostgres pool whose connections come back after the server does,
    and which hands out a live connection whenever it has one. Whatever it
    sends fails with NoAnswer past ``deadline`` seconds without an answer
    (None: waits as long as the server takes)."""

    def __init__(self, reactor: Any, deadline: float | None, *connargs: Any, **connkw: Any) -> None:
        self.reactor = reactor
        self.deadline = deadline
        super().__init__(None, *connargs, **connkw)

    @classmethod
    async def open_at_head(
        cls, reactor: Any, deadline: float | None, dsn: str, size: int
    ) -> "ReconnectingPool":
        """A started pool of ``size`` connections to a database whose schema
        is at head, else SchemaNotReady."""
        pool = cls(reactor, deadline, dsn, min=size, cursor_factory=NamedTupleCursor)
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
        return pool

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

    async def fetch(self, name: str, params: dict[str, Any], lost: Callable[[], None]) -> list[Row]:
        """Rows of the named statement, its errors translated. Whenever a
        connection turns out dead, ``lost()`` is told (the server probably
        went away for every connection) and the idle ones are touched, so
        they reconnect in the background instead of failing the next
        statements one by one."""
        try:
            resent, waited = False, 0.0
            while True:
                try:
                    rows: list[Row] = await self.runQuery(queries.SQL[name], params)
                    return rows
                except NoAnswer as error:
                    # Sent, maybe even done, but never answered: never sent
                    # again, since waiting a second deadline helps nobody.
                    self._connection_died(lost)
                    raise DatabaseUnavailable(f"{error}; try again shortly") from error
                except reconnection.ConnectionDead as error:
                    # Refused before anything was sent, so any statement may
                    # go again: while another connection is back, wait for it
                    # (briefly) rather than fail, since the server is there.
                    if not self.has_live_connection() or waited >= _RECOVERY_WAIT:
                        raise translate(error) from error
                    await task.deferLater(self.reactor, _RECOVERY_STEP, lambda: None)
                    waited += _RECOVERY_STEP
                except STATEMENT_FAILED as error:
                    if not connection_lost(error):
                        raise translate(error) from error
                    self._connection_died(lost)
                    # A read may go again once on another connection, whether
                    # or not the lost one had sent it; a write may not.
                    if resent or name not in queries.READS:
                        raise translate(error) from error
                    resent = True
        except defer.CancelledError as error:
            # txpostgres turns "canceling statement" into CancelledError, and
            # we never cancel a statement ourselves: the statement timeout did.
            raise DatabaseUnavailable("a statement took too long; try again shortly") from error

    def _connection_died(self, lost: Callable[[], None]) -> None:
        lost()
        self.ping_idle()

    def ping_idle(self) -> None:
        """Touch every idle connection not known dead, so one that lost the
        server starts reconnecting now."""
        for connection in list(self.connections):
            if not connection.detector.connectionIsDead:
                self.ping(connection)

    def ping(self, connection: txpostgres.Connection) -> None:
        """Touch ``connection``, so a dead one starts reconnecting; failures
        are its detector's business."""
        self._within_deadline(connection, connection.runQuery(queries.SQL["ping"])).addErrback(
            lambda _: None
        )

    def _within_deadline(
        self, connection: txpostgres.Connection, pending: Deferred[_T]
    ) -> Deferred[_T]:
        if self.deadline is None:
            return pending
        return within_deadline(self.reactor, self.deadline, connection, pending)

    # txpostgres' runQuery takes a connection with this (under its semaphore):
    # ours prefers a live one and puts a deadline on the statement.
    def _runQuery(self, *args: Any, **kwargs: Any) -> Deferred[list[Row]]:
        connection = self._take()
        return self._within_deadline(connection, connection.runQuery(*args, **kwargs)).addBoth(
            self._putBackAndPassthrough, connection
        )

    def _take(self) -> txpostgres.Connection:
        alive = [c for c in self.connections if not c.detector.connectionIsDead]
        connection = alive[0] if alive else next(iter(self.connections))
        self.connections.remove(connection)
        return connection

    def close(self) -> None:
        for connection in self._everyone:
            connection.detector.stopped = True
            connection.detector = None  # closed on purpose: stay closed
            try:
                connection.close()
            except AttributeError:
                pass  # txpostgres cannot close a connection that never opened
