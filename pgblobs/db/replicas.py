"""Read replicas: which database may answer a read now.

A streaming replica is used while it is close behind the primary: streaming,
and either caught up with what it received or at most ``max_lag`` seconds
behind in replay. Checked every ``CHECK_EVERY`` seconds, so a blob deleted
on the primary may still be served by a replica for at most ``max_lag`` +
``CHECK_EVERY`` seconds. While the primary cannot be reached, a replica that
stopped streaming still answers reads (nothing can be deleted meanwhile);
writes fail as they do without replicas. Reads that find nothing on a
replica ask the primary (the backend does), so an acknowledged blob is never
a 404 because a replica lags.
"""

import itertools
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from pgblobs.db.connector import Database

CHECK_EVERY = 1.0


class _Replica:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.fresh = False  # streaming and close behind the primary
        self.reachable = False


class Replicas:
    """The primary's Database and its replicas' (possibly none)."""

    def __init__(
        self, reactor: Any, primary: Database, replicas: list[Database], max_lag: float
    ) -> None:
        self.primary = primary
        self._replicas = [_Replica(database) for database in replicas]
        self._turns = itertools.cycle(self._replicas) if replicas else None
        self._max_lag = max_lag
        self._checks = task.LoopingCall(self._check_all)
        self._checks.clock = reactor
        if replicas:
            self._checks.start(CHECK_EVERY, now=True)

    def reader(self) -> Database:
        """A database for a read: a usable replica in turn, else the primary."""
        if self._turns is None:
            return self.primary
        primary_down = not self.primary.has_live_connection()
        for _ in self._replicas:
            replica = next(self._turns)
            if replica.fresh or (primary_down and replica.reachable):
                return replica.database
        return self.primary

    def _check_all(self) -> Deferred[None]:
        checks = [defer.ensureDeferred(self._check(replica)) for replica in self._replicas]
        return defer.gatherResults(checks).addCallback(lambda _: None)

    async def _check(self, replica: _Replica) -> None:
        try:
            row = (await replica.database.fetch("replica_state", {}))[0]
        except Exception:
            replica.fresh = replica.reachable = False
            return
        replica.reachable = bool(row.in_recovery)
        replica.fresh = bool(
            row.in_recovery
            and row.streaming
            and (row.caught_up or (row.replay_age is not None and row.replay_age <= self._max_lag))
        )

    def close(self) -> Deferred[None]:
        if self._checks.running:
            self._checks.stop()
        return defer.gatherResults(
            [replica.database.close() for replica in self._replicas]
        ).addCallback(lambda _: None)
