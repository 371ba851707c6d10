"""Sweeps: a statement every serving node runs every few seconds, whichever
node's work it finishes (claims whose lease ended, uploads past their
expiry). The state lives in the database, so one node left is enough, and
several nodes sweeping at once skip what another holds (each statement
says how)."""

from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pgblobs.db.connector import Database

_log = Logger()


class Sweep:
    """The statement ``name`` with ``params`` on ``database``, in rounds on
    ``clock``'s time; its one row's ``column`` says how much it did, and
    ``what`` names it in the log."""

    def __init__(
        self,
        database: Database,
        clock: IReactorTime,
        name: str,
        params: dict[str, Any],
        column: str,
        what: str,
    ) -> None:
        self._database = database
        self._name, self._params, self._column, self._what = name, params, column, what
        self._loop = task.LoopingCall(lambda: defer.ensureDeferred(self.round()))
        self._loop.clock = clock
        self._looping: Deferred[Any] | None = None  # fires once the loop has stopped
        self.done = 0  # what the rounds of this process did, in all

    async def round(self) -> int:
        """One round; how much it did. A failure (the database away, say) is
        logged, and the next round tries again."""
        try:
            rows = await self._database.fetch(self._name, self._params)
        except Exception as error:
            _log.warn("could not {what}: {error}", what=self._what, error=error)
            return 0
        count = int(getattr(rows[0], self._column))
        self.done += count
        return count

    def start(self, every: float) -> None:
        """Run a round now and every ``every`` seconds (a round never
        overlaps the one before), until ``stop``."""
        self._looping = self._loop.start(every, now=True)

    def stop(self) -> Deferred[Any]:
        """Stop the loop; fires once a round in flight is over."""
        if self._loop.running:
            self._loop.stop()
        return self._looping or defer.succeed(None)
