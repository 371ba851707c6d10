"""Coalescing: small operations that arrive together reach PostgreSQL as one
statement.

A request costs a round trip, a plan and, for a write, a commit whose WAL
flush dominates everything else. Requests that arrive in the same reactor
turn (one pass over the sockets that are ready) are gathered and leave as one
batch at the end of that turn, or at once when the batch is full. A lone
request leaves at the end of its own turn.

Reads do not wait for each other: several batches may be in flight on the
pool's connections. Writes may be limited to a few batches in flight: while
they commit, the next batch grows instead (group commit: a full batch per
commit, where batches sent at once would each commit a handful). A write
batch never waits for a user's lock (pgblobs.store_small_blobs_v2 leaves
such a user's items for later), so its time in flight is its own commit.
"""

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

# Items per statement: past a few dozen, a batch's statement grows slower
# than the round trips it saves (measured: bench/findings.md).
BATCH_SIZE = 25


class Coalescer(Generic[_Item, _Result]):
    """Runs ``run(items)`` for the items submitted together.

    ``run`` returns one outcome per item, in order: a result, or an
    exception that fails that item alone; if ``run`` itself fails, every
    item of its batch fails with that error.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        run: Callable[[list[_Item]], Awaitable[Sequence[_Result | BaseException]]],
        size: int = BATCH_SIZE,
        max_in_flight: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._run = run
        self._size = size
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._pending: list[tuple[_Item, Deferred[_Result]]] = []
        self._turn_end: IDelayedCall | None = None  # the call that sends the batch

    def submit(self, item: _Item) -> Deferred[_Result]:
        """A Deferred of ``item``'s outcome, once its batch has run."""
        outcome: Deferred[_Result] = Deferred()
        self._pending.append((item, outcome))
        if len(self._pending) >= self._size:
            self._send()
        elif self._turn_end is None:
            self._turn_end = self._reactor.callLater(0, self._send)
        return outcome

    def _send(self) -> None:
        if self._turn_end is not None:
            if self._turn_end.active():
                self._turn_end.cancel()
            self._turn_end = None
        while self._pending and (
            self._max_in_flight is None or self._in_flight < self._max_in_flight
        ):
            batch, self._pending = self._pending[: self._size], self._pending[self._size :]
            self._in_flight += 1
            defer.ensureDeferred(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[_Item, Deferred[_Result]]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in batch])
        except BaseException:
            failure = Failure()
            for _, waiting in batch:
                if not waiting.called:  # a caller may have given up
                    waiting.errback(failure)
            return
        finally:
            self._in_flight -= 1
            if self._pending and self._turn_end is None:
                self._turn_end = self._reactor.callLater(0, self._send)
        for (_, waiting), outcome in zip(batch, outcomes, strict=True):
            if waiting.called:
                continue
            if isinstance(outcome, BaseException):
                waiting.errback(Failure(outcome))
            else:
                waiting.callback(outcome)
