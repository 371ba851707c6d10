"""Admission alone: capacities, the waiting room and per-user shares of
content transfers, driven with plain Deferreds (no PostgreSQL, no reactor).

Each piece of work is a Deferred the test fires by hand, so "running" means
the admission has called it, and "waiting" that it has not yet."""

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred

from pgblobs.db.admission import Admission
from pgblobs.errors import DatabaseUnavailable


class Work:
    """One piece of work: started when admission calls it, settled by the test."""

    def __init__(self) -> None:
        self.started = False
        self.pending: Deferred[str] = Deferred()

    def __call__(self) -> Deferred[str]:
        self.started = True
        return self.pending


def outcome(deferred: Deferred[str]) -> list[object]:
    """Fills with the result (or the exception) once ``deferred`` fires."""
    seen: list[object] = []
    deferred.addCallbacks(seen.append, lambda failure: seen.append(failure.value))
    return seen


def transfer(admission: Admission, owner: str) -> tuple[Work, list[object]]:
    work = Work()
    return work, outcome(admission.transfer(owner, work))


def statement(admission: Admission) -> tuple[Work, list[object]]:
    work = Work()
    return work, outcome(defer.ensureDeferred(admission.statement(work)))


def test_a_users_transfers_past_their_share_wait_while_other_users_go_ahead():
    admission = Admission(pool_size=4, max_waiting=8, max_transfers_per_user=2)
    alices = [transfer(admission, "alice") for _ in range(3)]
    bobs_work, bobs_result = transfer(admission, "bob")

    assert [work.started for work, _ in alices] == [True, True, False]
    assert bobs_work.started
    assert admission.usage() == {"statements": 0, "content": 4}

    alices[0][0].pending.callback("done")
    assert alices[0][1] == ["done"]
    assert alices[2][0].started  # alice's turn came once one of hers ended
    bobs_work.pending.callback("bob's")
    assert bobs_result == ["bob's"]
    assert admission.usage()["content"] == 2


def test_a_user_may_fill_only_half_of_the_waiting_room():
    admission = Admission(pool_size=4, max_waiting=4, max_transfers_per_user=1)
    running, _ = transfer(admission, "alice")
    waiting = [transfer(admission, "alice") for _ in range(2)]
    turned_away, refused = transfer(admission, "alice")

    assert running.started and not any(work.started for work, _ in waiting)
    assert not turned_away.started
    assert len(refused) == 1 and isinstance(refused[0], DatabaseUnavailable)
    # The rest of the room is still there for everyone else.
    bobs_work, _ = transfer(admission, "bob")
    assert bobs_work.started


def test_transfers_past_the_pool_and_its_waiting_room_are_turned_away_until_one_ends():
    admission = Admission(pool_size=1, max_waiting=1, max_transfers_per_user=5)
    first, _ = transfer(admission, "alice")
    transfer(admission, "bob")
    _, refused = transfer(admission, "carol")
    assert isinstance(refused[0], DatabaseUnavailable)
    assert admission.usage()["content"] == 2

    first.pending.callback("done")
    carols_work, _ = transfer(admission, "carol")
    assert carols_work.started


def test_a_failed_transfer_gives_back_its_place_and_its_share():
    admission = Admission(pool_size=2, max_waiting=2, max_transfers_per_user=1)
    failing, result = transfer(admission, "alice")
    next_one, _ = transfer(admission, "alice")
    assert not next_one.started

    failing.pending.errback(DatabaseUnavailable("lost"))
    assert isinstance(result[0], DatabaseUnavailable)
    assert next_one.started
    assert admission.usage()["content"] == 1


def test_statements_queue_ten_times_deeper_than_transfers_and_no_deeper():
    admission = Admission(pool_size=1, max_waiting=1, max_transfers_per_user=1)
    admitted = [statement(admission) for _ in range(20)]
    assert all(work.started for work, _ in admitted)
    assert admission.usage() == {"statements": 20, "content": 0}

    _, refused = statement(admission)
    assert isinstance(refused[0], DatabaseUnavailable)

    admitted[0][0].pending.callback("rows")
    assert admitted[0][1] == ["rows"]
    late, _ = statement(admission)
    assert late.started


def test_a_failed_statement_is_no_longer_counted():
    admission = Admission(pool_size=1, max_waiting=0, max_transfers_per_user=1)
    work, result = statement(admission)
    work.pending.errback(DatabaseUnavailable("too long"))
    assert isinstance(result[0], DatabaseUnavailable)
    assert admission.usage() == {"statements": 0, "content": 0}


@pytest.mark.parametrize("max_waiting", [0, 1])
def test_a_user_may_always_wait_for_one_transfer(max_waiting):
    admission = Admission(pool_size=2, max_waiting=max_waiting, max_transfers_per_user=1)
    transfer(admission, "alice")
    second, result = transfer(admission, "alice")
    assert not second.started and result == []
