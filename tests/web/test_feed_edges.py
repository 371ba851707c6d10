"""Findings of the review of issue 20 (the change feed, idempotent writes, listing
pages, claims): each test shows one, against real `pgblobs serve` processes and a
real PostgreSQL, and passes once it is fixed."""

import json
import socket
import subprocess
import threading
import time

import psycopg2
import pytest

from pgblobs.db.queries import SQL
from pgblobs.feed import Cursor
from tests.helpers import (
    pgblobs_cli,
    pgblobs_command,
    seed_pending,
    sql,
    wait_until,
)
from tests.processes import ServeProcess, free_port
from tests.reliability.clients import Client, token_for
from tests.web.test_changes import feed, follow, held_on

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(migrated_dsn):
    services = free_port()
    started = ServeProcess(
        "--dsn", migrated_dsn, "--services-listen", f"tcp:{services}:interface=127.0.0.1"
    )
    started.services_port = services
    yield started
    started.stop()


@pytest.fixture
def alice(node, dsn):
    return Client(node.url, "alice", token_for(dsn, "alice"))


def purge_everything(dsn):
    done = pgblobs_cli("purge", "--older-than", "0s", "--dsn", dsn)
    assert done.returncode == 0, done.stderr


# The feed --------------------------------------------------------------------------------


def test_an_empty_feed_read_from_the_start_after_a_purge_gives_a_cursor_that_works(alice, dsn):
    """A user whose deletes were purged and who holds nothing now: a client that
    starts the feed without since, as the 410 tells it to, gets cursor c0, and
    that cursor is then below the user's horizon: 410 again, for ever."""
    assert alice.put("gone", b"x")[0] == 200
    assert alice.request("DELETE", "/blobs/alice/gone")[0] == 200
    purge_everything(dsn)
    status, _, answer = feed(alice)
    assert status == 200 and answer["changes"] == [], answer
    status, _, body = feed(alice, since=answer["cursor"])
    assert status == 200, (answer["cursor"], body)


def test_a_namespace_feed_from_the_start_survives_a_purge_in_another_namespace(alice, dsn):
    """The same loop for a reader of one namespace (an MX inbox, empty so far)
    while the user's deletes elsewhere are purged: it missed nothing, yet its
    first cursor is refused."""
    assert alice.put("elsewhere", b"x")[0] == 200
    assert alice.request("DELETE", "/blobs/alice/elsewhere")[0] == 200
    purge_everything(dsn)
    status, _, answer = feed(alice, namespace="MX")
    assert status == 200 and answer["changes"] == [], answer
    assert feed(alice, since=answer["cursor"], namespace="MX")[0] == 200


def test_a_feed_read_from_the_start_after_a_purge_can_follow_its_cursor(alice, dsn):
    """The common case: a user keeps a blob and deletes a later one, purge takes the
    tombstone. A new device reads the feed from the start (it gets the kept blob,
    so it misses nothing) and its cursor, the kept blob's number, is below the
    horizon: its very next read is 410, and so is every fresh start after it."""
    assert alice.put("kept", b"x")[0] == 200
    assert alice.put("later", b"y")[0] == 200
    assert alice.request("DELETE", "/blobs/alice/later")[0] == 200
    purge_everything(dsn)
    changes, cursor = follow(alice)
    assert [c["id"] for c in changes] == ["kept"]
    status, _, body = feed(alice, since=cursor)
    assert status == 200, (cursor, body)


def test_held_requests_whose_clients_went_away_are_let_go(node, dsn):
    """A GET's body is never asked for, so the connection stays paused
    (RequestBody pauses the transport until a consumer wants bytes) and the
    server never reads the client's FIN: a held request whose client vanished
    stays counted until its wait ends. 64 of them (a phone switching networks
    a few times a minute) and every device of the user is refused 429 for a
    minute."""
    carol = Client(node.url, "carol", token_for(dsn, "carol"))
    _, cursor = follow(carol)
    gone = []
    for _ in range(64):
        held = socket.create_connection((carol.host, carol.port))
        held.sendall(
            f"GET /changes/carol?since={cursor}&wait=60 HTTP/1.1\r\nHost: pgblobs\r\n"
            f"Authorization: {carol.auth}\r\n\r\n".encode()
        )
        gone.append(held)
    wait_until(lambda: held_on(node) == 64, "64 requests held")
    for held in gone:
        held.close()
    wait_until(lambda: held_on(node) == 0, "the vanished requests let go", timeout=10)
    status, _, body = feed(carol, since=cursor, wait=0.5)
    assert status == 200, body


def test_a_cursor_from_before_an_account_deletion_does_not_skip_its_deletes(node, dsn):
    """`pgblobs user delete` removes the user's rows outright, tombstones and all,
    and raises no change horizon, so a cursor from before stays valid: once the
    name is given back (the closed_accounts row deleted, as the README says) a
    device following the feed with it is told nothing changed, and keeps blobs
    that are gone. Every other removal of a change (purge) makes such a cursor 410."""
    dave = Client(node.url, "dave", token_for(dsn, "dave"))
    assert dave.put("kept", b"x")[0] == 200
    _, cursor = follow(dave)
    done = pgblobs_cli("user", "delete", "dave", "--yes", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    sql(dsn, "DELETE FROM pgblobs.closed_accounts WHERE user_id = 'dave'")
    dave = Client(node.url, "dave", token_for(dsn, "dave"))
    status, _, answer = feed(dave, since=cursor)
    assert status == 410 or answer["changes"], answer


# Locks the new triggers take ----------------------------------------------------------------


def advisory_waiters(dsn):
    return sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
    )[0][0]


# What the database's sessions are doing, for a failure's message.
ACTIVITY = (
    "SELECT state, wait_event, left(query, 60) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend'"
)


def flags_change_then(alice, dsn, blob_id, other_writer):
    """Line up what deadlocks: another writer of alice holds her lock (here a session
    standing in for any write committing), a flags POST of ``blob_id`` waits for
    it, then ``other_writer()`` starts something that locks the row and waits for
    her lock too; the lock is let go. The POST's answer and ``other_writer``'s
    outcome (a callable giving it once it is over)."""
    writer = psycopg2.connect(dsn)
    try:
        with writer.cursor() as cursor:
            cursor.execute("SELECT pgblobs.lock_users(ARRAY['alice'])")
        answers = []
        flags = threading.Thread(
            target=lambda: answers.append(
                alice.request("POST", f"/blobs/alice/{blob_id}", body=b'["PENDING"]')
            )
        )
        flags.start()
        wait_until(lambda: advisory_waiters(dsn) == 1, "the flags change waiting for alice")
        outcome = other_writer()
        wait_until(
            lambda: advisory_waiters(dsn) == 2,
            lambda: f"the other writer waiting for alice too: {sql(dsn, ACTIVITY)}",
        )
        writer.commit()
        flags.join(60)
        return answers[0], outcome()
    finally:
        writer.close()


def test_fsck_repair_and_a_flags_change_of_the_same_blob_do_not_deadlock(alice, dsn):
    """fsck --repair buries a broken row with bury_row, an UPDATE that locks the row
    and only then, in pgblobs.number_change, the user's lock. A flags POST takes the
    user's lock first, then the row's (pgblobs.set_flags): the two deadlock, and
    PostgreSQL aborts one (the POST is a 500, or fsck fails). Another writer of
    alice committing at that moment is all it takes to line them up."""
    assert alice.put("broken", b"content fsck will find lost")[0] == 200
    sql(
        dsn,
        "SELECT lo_unlink(lo_oid) FROM pgblobs.blobs "
        "WHERE user_id = 'alice' AND blob_id = 'broken'",
    )

    def fsck():
        running = subprocess.Popen(
            pgblobs_command("fsck", "--repair", "--dsn", dsn),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return lambda: (running.wait(60), running.communicate()[1])

    (status, _, body), (returncode, err) = flags_change_then(alice, dsn, "broken", fsck)
    assert status in (200, 404), body
    assert returncode == 1 and not err, err  # 1: it found (and buried) the broken row
    assert sql(
        dsn, "SELECT deleted_at IS NOT NULL FROM pgblobs.blobs WHERE blob_id = 'broken'"
    ) == [(True,)]


# The previous release's delete_blob (dfe8e1c), which nodes not yet upgraded still send
# during a rolling upgrade to revision 0014: the row's lock first, no user's lock.
PREVIOUS_DELETE = """
WITH target AS (
    SELECT id, lo_oid FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s
      AND blob_id = %(blob_id)s AND deleted_at IS NULL
    FOR UPDATE
), tombstone AS (
    UPDATE pgblobs.blobs AS b SET deleted_at = now(), lo_oid = NULL
    FROM target WHERE b.id = target.id
), unflagged AS (
    DELETE FROM pgblobs.blob_flags AS f USING target WHERE f.blob_row = target.id
)
SELECT lo_unlink(lo_oid) FROM target
"""


def test_a_previous_release_delete_racing_a_flags_change_costs_a_retry_not_a_500(alice, dsn):
    """A delete of the previous release, which nodes not yet upgraded still send
    during a rolling upgrade to revision 0014, locks the row and only then (in the
    trigger) the user: against this release's flags POST of the same blob, which
    takes them the other way round, it can deadlock. PostgreSQL fails one side;
    this release answers that with 503 and Retry-After, never a 500."""
    assert alice.put("both", b"x")[0] == 200

    def previous_release_delete():
        errors = []

        def delete():
            try:
                sql(
                    dsn,
                    PREVIOUS_DELETE,
                    {"user": "alice", "namespace": "default", "blob_id": "both"},
                )
            except psycopg2.Error as error:
                errors.append(error)

        thread = threading.Thread(target=delete)
        thread.start()
        return lambda: (thread.join(60), errors)[1]

    (status, headers, body), errors = flags_change_then(alice, dsn, "both", previous_release_delete)
    assert status in (200, 404, 503), body
    assert status != 503 or headers["Retry-After"] == "2"
    assert status == 503 or len(errors) <= 1


# Claims ------------------------------------------------------------------------------------


def flags_of(dsn, blob_id):
    return sql(
        dsn,
        "SELECT ARRAY(SELECT flag FROM pgblobs.blob_flags AS f WHERE f.blob_row = b.id "
        "ORDER BY flag) FROM pgblobs.blobs AS b WHERE b.user_id = 'alice' AND b.blob_id = %s "
        "AND b.deleted_at IS NULL",
        (blob_id,),
    )[0][0]


def test_a_lease_ended_by_processed_does_not_come_back_for_a_later_processing(alice, dsn):
    """Setting PROCESSED ends a claim's lease, the issue says; but the lease's row
    stays in pgblobs.claims until its time, and if the blob carries PROCESSING by
    then (set by a client, as Soledad's own incoming loop does, with no claim),
    pgblobs.expire_claims takes it back to PENDING: a lease that had ended acts."""
    seed_pending(dsn, 2)
    status, _, body = alice.request("POST", "/claim/alice?namespace=MX&limit=2&lease=2")
    assert (status, json.loads(body)) == (200, ["m001", "m002"])
    for flags in (b'["PROCESSED"]', b'["PROCESSING"]'):
        status, _, body = alice.request("POST", "/blobs/alice/m001?namespace=MX", body=flags)
        assert status == 200, body
    # m002 was leased with it, for as long: once it is back, m001's old lease has ended.
    wait_until(lambda: flags_of(dsn, "m002") == ["PENDING"], "m002's lease over", timeout=15)
    assert flags_of(dsn, "m001") == ["PROCESSING"]


# Costs -------------------------------------------------------------------------------------

# %(count)s live blobs of alice in the default namespace: rows only (their large-object
# numbers are never read), each numbered by pgblobs.number_change as any write is.
ALICE_SEED = """
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256)
    SELECT 'alice', 'default', 'seeded-' || i, i, 0, 'tag', '\\x00'
    FROM generate_series(1, %(count)s) AS i
"""


def test_a_namespace_feed_does_not_read_the_other_namespaces_changes_again(alice, dsn):
    """An answer with no change in the namespace asked hands back the cursor it was
    given, however many of the user's changes in other namespaces it read past: a
    client following its inbox (namespace=MX) while the user's 20,000 blobs sync
    reads them all again on every poll, and a held request on every wake-up (each
    write of the user wakes it), ever more as the other namespace grows."""
    sql(dsn, ALICE_SEED, {"count": 20_000})
    sql(dsn, "ANALYZE pgblobs.blobs")
    status, _, answer = feed(alice, namespace="MX")
    assert status == 200 and answer["changes"] == [], answer
    since = Cursor.parse(answer["cursor"]).number
    params = {"user": "alice", "namespace": "MX", "since": since, "limit": 1000}
    [[plan]] = sql(dsn, "EXPLAIN (ANALYZE, FORMAT JSON) " + SQL["changes"], params)

    def removed(node):
        return node.get("Rows Removed by Filter", 0) + sum(map(removed, node.get("Plans", [])))

    assert removed(plan[0]["Plan"]) < 1000, "the next read goes over them all again"


# Idempotent writes -------------------------------------------------------------------------


def in_transaction(dsn):
    """Connections idle inside a transaction: uploads streaming into large objects."""
    return sql(dsn, "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")[0][
        0
    ]


def next_second():
    """Wait until the clock's second turns (deliveries are stamped to the second)."""
    now = int(time.time())
    wait_until(lambda: int(time.time()) > now, "the next second", every=0.01)


INSERT_ONE = (
    "SELECT pgblobs.insert_blobs(ARRAY[%s], ARRAY[''], ARRAY['one'], ARRAY['x'::bytea], "
    "ARRAY['tag'], ARRAY['\\x00'::bytea], '{}', '{}', '{}')"
)


def committing_in_thread(dsn, user, synchronous_commit):
    """A session that wrote a blob row of ``user`` and commits in a thread; the
    Event is set once the commit returned."""
    connection = psycopg2.connect(dsn)
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,))
        cursor.execute(INSERT_ONE, (user,))
    committed = threading.Event()

    def commit():
        connection.commit()
        committed.set()

    thread = threading.Thread(target=commit)
    thread.start()
    return connection, thread, committed
