"""The Coalescer on a fake clock: what is submitted in one reactor turn
leaves as one batch at its end (or at once when full), at most
``max_in_flight`` batches run while the next one grows, and each item gets
its own outcome, or its batch's failure."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pgblobs.db.batching import Coalescer
from tests.fast.wire import result_of


class _Runs:
    """A ``run`` for the Coalescer whose batches finish when the test says."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self._pending: list[defer.Deferred[list[object]]] = []

    async def __call__(self, items: list[int]) -> list[object]:
        self.batches.append(items)
        finished: defer.Deferred[list[object]] = defer.Deferred()
        self._pending.append(finished)
        return await finished

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def finish(self, outcomes: list[object] | None = None) -> None:
        """The oldest batch in flight ends: ``outcomes``, or each item doubled."""
        batch = self.batches[len(self.batches) - len(self._pending)]
        self._pending.pop(0).callback([n * 2 for n in batch] if outcomes is None else outcomes)

    def fail(self, error: Exception) -> None:
        self._pending.pop(0).errback(error)


def _coalescer(
    size: int = 25, max_in_flight: int | None = None
) -> tuple[Clock, _Runs, Coalescer[int, object]]:
    clock, runs = Clock(), _Runs()
    return clock, runs, Coalescer(clock, runs, size=size, max_in_flight=max_in_flight)


def test_items_of_one_turn_leave_together_at_its_end():
    clock, runs, coalescer = _coalescer()
    outcomes = [coalescer.submit(n) for n in range(3)]
    assert runs.batches == []  # not before the turn ends
    clock.advance(0)
    assert runs.batches == [[0, 1, 2]]
    runs.finish()
    assert [result_of(o) for o in outcomes] == [0, 2, 4]
    coalescer.submit(7)
    clock.advance(0)
    assert runs.batches[-1] == [7]  # a lone item leaves at the end of its own turn


def test_a_full_batch_leaves_at_once():
    clock, runs, coalescer = _coalescer(size=3)
    for n in range(7):
        coalescer.submit(n)
    assert runs.batches == [[0, 1, 2], [3, 4, 5]]
    clock.advance(0)
    assert runs.batches[-1] == [6]


def test_without_a_limit_every_batch_runs_at_once():
    _, runs, coalescer = _coalescer(size=2)
    for n in range(6):
        coalescer.submit(n)
    assert runs.in_flight == 3


def test_past_max_in_flight_the_next_batch_grows_until_one_finishes():
    clock, runs, coalescer = _coalescer(size=4, max_in_flight=1)
    first = coalescer.submit(0)
    clock.advance(0)
    later = [coalescer.submit(n) for n in range(1, 4)]
    clock.advance(0)
    later.append(coalescer.submit(4))  # a turn later: still the same batch
    clock.advance(0)
    assert runs.batches == [[0]] and runs.in_flight == 1
    runs.finish()
    assert result_of(first) == 0
    clock.advance(0)  # the waiting batch leaves on the next turn
    assert runs.batches == [[0], [1, 2, 3, 4]]
    runs.finish()
    assert [result_of(o) for o in later] == [2, 4, 6, 8]


def test_only_max_in_flight_batches_run_whatever_is_waiting():
    clock, runs, coalescer = _coalescer(size=2, max_in_flight=2)
    for n in range(9):
        coalescer.submit(n)
    clock.advance(0)
    assert runs.in_flight == 2
    runs.finish()
    clock.advance(0)
    assert runs.in_flight == 2 and runs.batches[-1] == [4, 5]


def test_an_exception_as_an_outcome_fails_that_item_alone():
    clock, runs, coalescer = _coalescer()
    outcomes = [coalescer.submit(n) for n in range(3)]
    clock.advance(0)
    runs.finish([10, KeyError("taken"), 30])
    assert result_of(outcomes[0]) == 10
    with pytest.raises(KeyError, match="taken"):
        result_of(outcomes[1])
    assert result_of(outcomes[2]) == 30


def test_a_failed_batch_fails_each_of_its_items_and_the_next_batch_still_runs():
    clock, runs, coalescer = _coalescer(max_in_flight=1)
    failed = [coalescer.submit(n) for n in range(2)]
    clock.advance(0)
    waiting = coalescer.submit(5)
    runs.fail(ConnectionError("the database went away"))
    for outcome in failed:
        with pytest.raises(ConnectionError, match="went away"):
            result_of(outcome)
    clock.advance(0)
    runs.finish()
    assert result_of(waiting) == 10


def test_a_caller_that_gave_up_is_left_alone():
    clock, runs, coalescer = _coalescer()
    abandoned = coalescer.submit(1)
    kept = coalescer.submit(2)
    abandoned.cancel()
    clock.advance(0)
    runs.finish()
    assert result_of(kept) == 4
    with pytest.raises(defer.CancelledError):
        result_of(abandoned)
