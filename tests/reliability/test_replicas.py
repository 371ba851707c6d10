"""Reads from a streaming replica (issues 12 and 17): `--replica-dsn` takes reads
off the primary, an acknowledged blob is never a 404 because the replica lags,
and a replica answers only while the primary's heartbeat says it is at most
`--replica-max-lag` behind, whatever its link or the primary does; a node
starts without its replicas, which join when they answer.

The bounds are checked strictly, with no slack for a slow machine: the node
and these tests share the host's monotonic clock, and a read sent more than
max-lag seconds after a change was acknowledged must see it (see
pgblobs/db/replicas.py for why the bound holds exactly)."""

import contextlib
import os
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from pgblobs import PostgresBlobsBackend
from pgblobs.errors import DatabaseUnavailable
from tests.helpers import pgblobs_cli, sleep, sql, until, wait_until, write
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow


# --replica-max-lag of tests that must see a stalled replica still answer
# before the bound: long enough that a busy machine does not miss that window.
MAX_LAG = 5.0
JOINED = "joined"  # the node's log line when a replica starts answering reads
LOST = "lost"  # ... and when it stops


def node_with_replica(primary, standby, max_lag=MAX_LAG, **options):
    """A node reading from ``standby``, and alice's client of it."""
    token = token_for(primary.dsn, "alice")
    node = ServeProcess(
        "--dsn",
        primary.dsn,
        "--replica-dsn",
        standby.dsn,
        "--replica-max-lag",
        str(max_lag),
        **options,
    )
    return node, Client(node.url, "alice", token)


def replica_log(node, word):
    """The node's log lines about its replica that contain ``word``."""
    return [line for line in node.errors if "read replica" in line and word in line]


def wait_for_log(node, word, timeout=30):
    wait_until(
        lambda: replica_log(node, word),
        lambda: f"logged a replica {word!r} line:\n" + "".join(node.errors),
        timeout,
    )


def wait_replayed(standby, blob_id, timeout=30):
    """Until ``standby`` has replayed the live blob ``blob_id``."""
    live = "SELECT 1 FROM pgblobs.blobs WHERE blob_id = %s AND deleted_at IS NULL"
    wait_until(lambda: sql(standby.dsn, live, (blob_id,)), f"replayed {blob_id}", timeout)


def answers_until(ask, until):
    """(sent at, answer) of ``ask()`` called again and again until ``until``
    (time.monotonic()): what the node answers over a stretch of time, which
    no condition can stand in for."""
    answers = []
    while time.monotonic() < until:
        sent = time.monotonic()
        answers.append((sent, ask()))
        time.sleep(0.05)
    return answers


def sent_after(answers, moment):
    late = [answer for sent, answer in answers if sent >= moment]
    assert late, "nothing was asked after the bound"
    return late


@contextlib.contextmanager
def stopped(pid):
    """The process ``pid`` stopped (SIGSTOP) inside the block."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def walsender_pid(primary):
    return sql(primary.dsn, "SELECT pid FROM pg_stat_replication")[0][0]


def kill(cluster):
    cluster._process.kill()  # SIGKILL the postmaster; its backends follow
    cluster._process.wait()


def test_reads_go_to_the_replica_and_never_miss_an_acknowledged_blob(replicated):
    primary, standby = replicated
    node, client = node_with_replica(primary, standby)
    try:
        wait_for_log(node, JOINED)
        written = {}
        for number in range(100):
            written[f"r{number}"] = os.urandom(500 + number)
            assert client.put(f"r{number}", written[f"r{number}"])[0] == 200
            # Read at once: if the replica has not replayed it yet, the primary answers.
            status, _, body = client.get(f"r{number}")
            assert (status, body) == (200, written[f"r{number}"])
        status, _, listing = client.request("GET", "/blobs/alice/")
        assert status == 200 and len(listing) > 2

        # Freeze the replica's replay, then delete a blob on the primary: the
        # replica still serves it, until it is more than --replica-max-lag
        # behind; from then on the primary answers, 404.
        wait_replayed(standby, "r0")
        sql(standby.dsn, "SELECT pg_wal_replay_pause()")
        try:
            assert client.request("DELETE", "/blobs/alice/r0")[0] == 200
            deleted = time.monotonic()
            answers = answers_until(lambda: client.get("r0")[0], deleted + MAX_LAG + 1)
        finally:
            sql(standby.dsn, "SELECT pg_wal_replay_resume()")
        assert answers[0][1] == 200, "the read did not come from the replica"
        assert set(sent_after(answers, deleted + MAX_LAG)) == {404}
    finally:
        node.stop()


def test_a_replica_that_says_streaming_but_receives_nothing_leaves_reads_at_max_lag(streaming):
    """The primary's walsender stopped: the replica still says it streams and
    has replayed all it received, yet it is behind."""
    primary, standby = streaming
    node, client = node_with_replica(primary, standby)
    try:
        assert client.put("doomed", b"d" * 100)[0] == 200
        wait_replayed(standby, "doomed")
        wait_for_log(node, JOINED)
        with stopped(walsender_pid(primary)):
            assert client.request("DELETE", "/blobs/alice/doomed")[0] == 200
            deleted = time.monotonic()
            answers = answers_until(lambda: client.get("doomed")[0], deleted + MAX_LAG + 1)
            wait_for_log(node, LOST)
        assert answers[0][1] == 200, "the read did not come from the replica"
        late = sent_after(answers, deleted + MAX_LAG)
        assert set(late) == {404}, f"a deleted blob was served {late.count(200)} times late"
    finally:
        node.stop()


def test_a_replica_that_hangs_leaves_reads_at_max_lag(streaming):
    """Every session of the node on the replica stopped: its checks hang, and
    its freshness expires without them."""
    primary, standby = streaming
    node, _ = node_with_replica(primary, standby)
    # A read the replica took hangs: the client gives up soon and asks again.
    client = Client(node.url, "alice", token_for(primary.dsn, "alice"), timeout=0.5)
    try:
        assert client.put("held", b"h" * 100)[0] == 200
        wait_replayed(standby, "held")
        wait_for_log(node, JOINED)
        sessions = sql(
            standby.dsn,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND datname = 'pgblobs' AND pid <> pg_backend_pid()",
        )
        with contextlib.ExitStack() as stack:
            for (pid,) in sessions:
                stack.enter_context(stopped(pid))
            assert client.request("DELETE", "/blobs/alice/held")[0] == 200
            deleted = time.monotonic()
            # Status 0 while the replica takes the reads; from the bound on,
            # the primary answers.
            answers = answers_until(lambda: client.get("held")[0], deleted + MAX_LAG + 2)
            wait_for_log(node, "does not answer its check")
        assert set(sent_after(answers, deleted + MAX_LAG)) == {404}
    finally:
        node.stop()


def test_a_replica_dsn_that_is_no_replica_is_said_at_once_and_never_read(dsn):
    node = ServeProcess("--dsn", dsn, "--replica-dsn", dsn)
    client = Client(node.url, "alice", token_for(dsn, "alice"))
    try:
        wait_for_log(node, "not a replica")
        assert client.put("plain", b"p")[0] == 200
        assert client.get("plain")[:3:2] == (200, b"p")
        assert not replica_log(node, JOINED)
    finally:
        node.stop()


def test_with_the_primary_down_a_stale_replica_accepts_no_revoked_token(streaming):
    primary, standby = streaming
    lag = 2.0  # the default
    node, client = node_with_replica(primary, standby, max_lag=lag)
    try:
        assert client.put("kept", b"k" * 100)[0] == 200
        wait_replayed(standby, "kept")
        wait_for_log(node, JOINED)
        sql(standby.dsn, "SELECT pg_wal_replay_pause()")  # it goes on saying "streaming"
        done = pgblobs_cli("token", "revoke", "alice", "--dsn", primary.dsn)
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        kill(primary)
        answers = answers_until(lambda: client.get("kept")[:2], revoked + lag + 1)
        late = sent_after(answers, revoked + lag)
        assert [status for status, _ in late] == [503] * len(late), late
        assert all("Retry-After" in headers for _, headers in late)
    finally:
        node.stop()


def test_with_the_primary_down_reads_go_on_within_the_bound_and_writes_answer_503(replicated):
    primary, standby = replicated
    node, client = node_with_replica(primary, standby)
    try:
        written = {f"d{n}": os.urandom(3000 + n) for n in range(20)}
        for blob_id, data in written.items():
            assert client.put(blob_id, data)[0] == 200
        wait_for_log(node, JOINED)
        kill(primary)
        down = time.monotonic()  # every heartbeat the replica has was sent before
        wait_until(lambda: client.get("d0")[0] == 200, "reading from the replica", timeout=10)
        for blob_id, data in written.items():
            status, _, body = client.get(blob_id)
            assert (status, body) == (200, data)
        status, headers, _ = client.put("after", b"x")
        assert status == 503 and "Retry-After" in headers
        # The replica's last heartbeat ages: past the bound it answers no more.
        answers = answers_until(lambda: client.get("d1")[:2], down + MAX_LAG + 1)
        late = sent_after(answers, down + MAX_LAG)
        assert [status for status, _ in late] == [503] * len(late), late
        assert all("Retry-After" in headers for _, headers in late)
        assert node.process.poll() is None
    finally:
        node.stop()


@pytest_twisted.ensureDeferred
async def test_with_the_primary_down_a_failed_fallback_fails_only_its_own_read(streaming):
    """Reads of one reactor turn go as one batch; the one the replica lacks
    cannot be asked of the primary, and only that one fails."""
    primary, standby = streaming
    backend = await PostgresBlobsBackend.connect(
        primary.dsn, replica_dsn=[standby.dsn], replica_max_lag=MAX_LAG
    )
    try:
        present = {name: os.urandom(100 + number) for number, name in enumerate("abcd")}
        for blob_id, data in present.items():
            await write(backend, "alice", blob_id, data)
        wait_replayed(standby, "d")
        await until(
            lambda: backend.reading.reader() is not backend.database,
            "reading from the replica",
            timeout=30,
        )
        primary.stop()
        down = time.monotonic()
        wanted = ["a", "b", "missing", "c", "d"]
        outcomes = await defer.DeferredList(
            [backend.open_blob("alice", blob_id) for blob_id in wanted], consumeErrors=True
        )
        for blob_id, (succeeded, outcome) in zip(wanted, outcomes, strict=True):
            if blob_id == "missing":
                assert not succeeded and outcome.check(DatabaseUnavailable), outcome
            else:
                assert succeeded, f"{blob_id}: {outcome}"
                assert outcome.content == present[blob_id]
        # And past the bound the replica answers nothing more.
        late = []
        while time.monotonic() < down + MAX_LAG + 1:
            sent = time.monotonic()
            try:
                await backend.open_blob("alice", "a")
                answered = True
            except DatabaseUnavailable:
                answered = False
            if sent >= down + MAX_LAG:
                late.append(answered)
            await sleep(0.05)  # asking again and again, as answers_until does
        assert late and not any(late), "a replica answered past the bound"
    finally:
        await backend.close()


def test_a_node_starts_without_its_replica_and_the_replica_joins_when_it_answers(streaming):
    primary, standby = streaming
    standby.stop()
    node, client = node_with_replica(primary, standby, timeout=30)
    try:
        assert client.put("early", b"e" * 100)[0] == 200
        assert client.get("early")[:3:2] == (200, b"e" * 100)
        assert not replica_log(node, JOINED)
        standby.start()
        wait_for_log(node, JOINED)
        # The replica answers reads now: frozen, it still serves a deleted blob.
        wait_replayed(standby, "early")
        sql(standby.dsn, "SELECT pg_wal_replay_pause()")
        assert client.request("DELETE", "/blobs/alice/early")[0] == 200
        assert client.get("early")[0] == 200, "the read did not come from the replica"
        sql(standby.dsn, "SELECT pg_wal_replay_resume()")
        standby.stop()
        wait_for_log(node, LOST)
        # The primary answers now, and the replica that keeps failing its
        # checks is not reported again and again.
        answers = answers_until(lambda: client.get("early")[0], time.monotonic() + 3)
        assert {status for _, status in answers} == {404}
        assert len(replica_log(node, JOINED)) == 1 and len(replica_log(node, LOST)) == 1
    finally:
        node.stop()
