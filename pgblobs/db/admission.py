"""Admission: who may wait for the database, and how many of them.

Work past capacity is turned away at once with DatabaseUnavailable, so a
backlog fails fast instead of growing while the clients have long given up.
Nothing here talks to PostgreSQL: ``Admission`` counts what it is handed
(anything that returns an awaitable or a Deferred), so it can be tested alone.
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredSemaphore

from pgblobs.errors import DatabaseUnavailable

_T = TypeVar("_T")


def _admit(in_flight: int, capacity: int) -> None:
    if in_flight >= capacity:
        raise DatabaseUnavailable("too many requests wait for the database; try again shortly")


class Admission:
    """Statements and content transfers in flight (running, or waiting for
    one of ``pool_size`` connections), each kind within its capacity.

    Content transfers hold a connection for as long as a client takes;
    statements for milliseconds, so they may queue ten times deeper.

    A user runs at most ``max_transfers_per_user`` transfers at once; the rest
    wait their turn, so one user's stalled transfers leave the other content
    connections free. A user may fill at most half of the waiting room
    (``max_waiting``); past it, or past the whole of it, DatabaseUnavailable.
    """

    def __init__(self, pool_size: int, max_waiting: int, max_transfers_per_user: int) -> None:
        self._transfer_capacity = pool_size + max_waiting
        self._statement_capacity = 10 * self._transfer_capacity
        self._statements = 0
        self._transfers = 0
        self._max_transfers_per_user = max_transfers_per_user
        self._user_waiting = max(1, max_waiting // 2)
        # user -> their share, while the user has transfers
        self._shares: dict[str, DeferredSemaphore] = {}

    async def statement(self, run: Callable[[], Awaitable[_T]]) -> _T:
        """What ``run()`` gives, counted as a statement in flight until it
        settles; DatabaseUnavailable when too many are."""
        _admit(self._statements, self._statement_capacity)
        self._statements += 1
        try:
            return await run()
        finally:
            self._statements -= 1

    def transfer(self, owner: str, run: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        """``run()``'s result once the user ``owner`` has a free share, and
        the transfer counted in flight until it settles; a failed Deferred
        (DatabaseUnavailable) when the transfer may not even wait."""
        share = self._shares.get(owner)
        try:
            _admit(self._transfers, self._transfer_capacity)
            _admit(0 if share is None else len(share.waiting), self._user_waiting)
        except DatabaseUnavailable:
            return defer.fail()
        if share is None:
            share = self._shares[owner] = DeferredSemaphore(self._max_transfers_per_user)
        self._transfers += 1

        def finished(result: _T) -> _T:
            self._transfers -= 1
            if share.tokens == share.limit and not share.waiting:
                self._shares.pop(owner, None)
            return result

        return share.run(run).addBoth(finished)

    def usage(self) -> dict[str, int]:
        """Statements and content transfers in flight (running or waiting)."""
        return {"statements": self._statements, "content": self._transfers}
