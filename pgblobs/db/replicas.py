"""Read replicas: which database may answer a read now.

How far behind a replica is, is measured against the primary, never taken
from the replica's own view: a replica whose link is stalled still says it
streams and has replayed everything it received, and the time of its last
replayed transaction says nothing while no one writes. So a node with
replicas writes a heartbeat on the primary (``Heartbeat``) and reads on each
replica which heartbeat it has replayed.

The bound: a replica answers a read only while it has replayed a heartbeat
this node sent less than ``max_lag`` seconds ago, so every read that starts
more than ``max_lag`` seconds after a change was acknowledged (a delete, a
revoked token, on any node) sees it — whatever the replica's link does, and
whether or not the primary is up: while the primary is down, no heartbeat
is written, the last one a replica has ages, and past ``max_lag`` reads fail
as they do without replicas (503) rather than be answered by a replica that
may have missed anything. The bound holds between checks too (a replica's
freshness has an expiry, it needs no check to end); the checks, like the
heartbeats, run every ``max_lag / 4`` seconds (at most ``CHECK_EVERY``), and
only decide how soon a replica that caught up answers again.

Reads that find nothing on a replica ask the primary (``Replicas.read_through``),
so an acknowledged blob is never a 404 because a replica lags. A replica that
cannot be reached is tried again in the background; it joins the reads as
soon as it answers and is close behind.
"""

import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pgblobs.db.connector import Database
from pgblobs.db.queries import Row
from pgblobs.errors import DatabaseUnavailable

CHECK_EVERY = 1.0  # at most, between heartbeats and between checks of a replica
_SHORTEST_EVERY = 0.05
# The first and the longest wait between attempts to connect a replica not reachable.
_CONNECT_RETRY = (0.5, 5.0)
_log = Logger()
_Wanted = TypeVar("_Wanted", bound=Hashable)


class Heartbeat:
    """The heartbeats this node wrote on the primary, and what they tell of a
    replica's data.

    A beat bumps the counter of ``pgblobs.heartbeat``; the node notes the
    moment before it sent the beat (its monotonic clock) and the value it
    got. Updates of one row commit one after another, so a replica that has
    replayed the value V has replayed every commit before V's: everything
    acknowledged, to anyone, before V was sent. That moment, on this node's
    own clock, says how old a replica's data may be; no two hosts' clocks
    are ever compared, so skew between them plays no part.
    """

    def __init__(self, max_lag: float) -> None:
        self._max_lag = max_lag
        self._sent: deque[tuple[float, int]] = deque()  # (sent at, value), oldest first

    def beaten(self, sent_at: float, value: int) -> None:
        if self._sent and value <= self._sent[-1][1]:
            # The counter went back: this primary is not the one that counted
            # before (a standby promoted without our last beats, a restored
            # backup), so the earlier beats say nothing of its replicas.
            self._sent.clear()
        self._sent.append((sent_at, value))
        # A beat sent more than max_lag ago can only say "too far behind",
        # which no beat at all says as well.
        while self._sent[0][0] < sent_at - self._max_lag:
            self._sent.popleft()

    def fresh_until(self, replayed: int) -> float:
        """Until when (time.monotonic()) a replica that has replayed the beat
        ``replayed`` (0: none) may answer reads; -inf when it has none of ours."""
        for sent_at, value in reversed(self._sent):
            if value <= replayed:
                return sent_at + self._max_lag
        return -math.inf


def _display(dsn: str) -> str:
    """``dsn`` without its password, for the log."""
    parts = parse_dsn(dsn)
    parts.pop("password", None)
    return str(make_dsn(**parts))


def _reason(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class _Replica:
    def __init__(self, dsn: str, connect: Callable[[], Awaitable[Database]]) -> None:
        self.name = _display(dsn)
        self.connect = connect
        self.database: Database | None = None  # until it could be connected
        self.fresh_until = -math.inf  # time.monotonic() until which it may answer reads
        # As of its last check, None before the first (the log tells each change).
        self.answering: bool | None = None
        self.checking = False
        self.nap: Deferred[None] | None = None  # between attempts to connect


class Replicas:
    """The primary's Database and its replicas' (possibly none)."""

    def __init__(self, reactor: Any, primary: Database, max_lag: float) -> None:
        self.primary = primary
        self._reactor = reactor
        self._max_lag = max_lag
        self._replicas: list[_Replica] = []
        self._turns: itertools.cycle[_Replica] | None = None
        self._heartbeat = Heartbeat(max_lag)
        self._beating = False
        self._closed = False
        self._ticks = task.LoopingCall(self._tick)
        self._ticks.clock = reactor

    def join(self, dsn: str, connect: Callable[[], Awaitable[Database]]) -> None:
        """Read from the replica at ``dsn`` once ``connect()`` has connected it
        (tried until it succeeds) and it is close behind."""
        replica = _Replica(dsn, connect)
        self._replicas.append(replica)
        self._turns = itertools.cycle(self._replicas)
        if not self._ticks.running:
            self._ticks.start(max(_SHORTEST_EVERY, min(CHECK_EVERY, self._max_lag / 4)))
        defer.ensureDeferred(self._connect(replica))

    def reader(self) -> Database:
        """A database for a read: a replica close behind, in turn, else the primary."""
        if self._turns is None:
            return self.primary
        now = time.monotonic()
        for _ in self._replicas:
            replica = next(self._turns)
            if replica.database is not None and replica.fresh_until > now:
                return replica.database
        return self.primary

    async def read_through(
        self,
        look_up: Callable[[Database, list[_Wanted]], Awaitable[dict[_Wanted, Row]]],
        wanted: list[_Wanted],
    ) -> tuple[dict[_Wanted, tuple[Row, Database]], DatabaseUnavailable | None]:
        """What ``look_up(database, wanted)`` finds, with the database that
        found it: a replica's answers, and the primary's for whatever the
        replica lacks (it may not have replayed it yet), so an acknowledged
        blob is never missing because a replica lags. And why the primary
        could not be asked, if it could not: that concerns only what was not
        found (whether it exists is unknown); what the replica found stands."""
        reader = self.reader()
        found: dict[_Wanted, tuple[Row, Database]] = {}
        if reader is not self.primary:
            try:
                found = {
                    item: (row, reader) for item, row in (await look_up(reader, wanted)).items()
                }
            except DatabaseUnavailable:
                pass  # gone since its last check: the primary answers for all
        missing = [item for item in wanted if item not in found]
        if missing:
            try:
                again = await look_up(self.primary, missing)
            except DatabaseUnavailable as error:
                return found, error
            found.update({item: (row, self.primary) for item, row in again.items()})
        return found, None

    async def first_row(self, name: str, params: dict[str, Any]) -> Row | None:
        """The first row of the statement ``name``, through ``read_through``:
        None when neither a replica nor the primary has one; DatabaseUnavailable
        when the primary could not be asked whether it has."""

        async def look_up(database: Database, _: list[None]) -> dict[None, Row]:
            rows = await database.fetch(name, params)
            return {None: rows[0]} if rows else {}

        found, unavailable = await self.read_through(look_up, [None])
        if found:
            return found[None][0]
        if unavailable is not None:
            raise unavailable
        return None

    async def _connect(self, replica: _Replica) -> None:
        delay, told = _CONNECT_RETRY[0], False
        while not self._closed:
            try:
                database = await replica.connect()
            except Exception as error:
                if not told:
                    _log.warn(
                        "read replica {name} cannot be reached ({reason}); reads go to the "
                        "primary until it answers",
                        name=replica.name,
                        reason=_reason(error),
                    )
                    told = True
                replica.nap = task.deferLater(self._reactor, delay, lambda: None)
                try:
                    await replica.nap
                except defer.CancelledError:
                    return  # closed
                delay = min(2 * delay, _CONNECT_RETRY[1])
                continue
            if self._closed:
                await database.close()
            else:
                replica.database = database
            return

    def _tick(self) -> None:
        # Neither a beat nor a check waits for another: a primary or a
        # replica that hangs holds up nothing but itself.
        if not self._beating:
            defer.ensureDeferred(self._beat())
        now = time.monotonic()
        for replica in self._replicas:
            if replica.database is None:
                continue
            if not replica.checking:
                defer.ensureDeferred(self._check(replica, replica.database))
            elif replica.fresh_until <= now:
                self._out(replica, "it does not answer its check")

    async def _beat(self) -> None:
        self._beating = True
        sent_at = time.monotonic()
        try:
            rows = await self.primary.fetch("beat", {})
        except Exception:
            # No beat: the replicas' data ages, as it must while the primary
            # cannot be written (and so cannot be asked what changed).
            return
        finally:
            self._beating = False
        self._heartbeat.beaten(sent_at, rows[0].beat)

    async def _check(self, replica: _Replica, database: Database) -> None:
        replica.checking = True
        try:
            row = (await database.fetch("replica_state", {}))[0]
        except Exception as error:
            replica.fresh_until = -math.inf
            self._out(replica, f"it does not answer ({_reason(error)})")
            return
        finally:
            replica.checking = False
        if not row.in_recovery:
            replica.fresh_until = -math.inf
            not_a_replica = "it is not in recovery, so not a replica of the primary"
            if replica.answering is None:  # misconfigured, most likely: say so at once
                _log.warn("read replica {name}: {reason}", name=replica.name, reason=not_a_replica)
            self._out(replica, not_a_replica)
            return
        replica.fresh_until = self._heartbeat.fresh_until(row.beat)
        if replica.fresh_until > time.monotonic():
            if not replica.answering:
                replica.answering = True
                _log.info("read replica {name} joined: it answers reads", name=replica.name)
        else:
            self._out(replica, f"it is more than {self._max_lag:g} s behind the primary")

    def _out(self, replica: _Replica, reason: str) -> None:
        was_answering, replica.answering = replica.answering, False
        if was_answering and not self._closed:
            _log.warn(
                "read replica {name} lost: {reason}; reads go elsewhere until it answers "
                "and is close behind",
                name=replica.name,
                reason=reason,
            )

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._ticks.running:
            self._ticks.stop()
        for replica in self._replicas:
            if replica.nap is not None:
                replica.nap.cancel()
        return defer.gatherResults(
            [replica.database.close() for replica in self._replicas if replica.database]
        ).addCallback(lambda _: None)
