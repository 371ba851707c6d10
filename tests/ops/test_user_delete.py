"""`pgblobs user delete`: a user's account removed in short batches while a
real `pgblobs serve` serves another user, interrupted and resumed."""

import hashlib
import os
import pty
import select
import signal
import socket
import subprocess
import threading
import time

import psycopg2
import pytest

from pgblobs.errors import AccountClosed
from pgblobs.versions import INLINE_LIMIT
from tests.helpers import (
    create_token,
    create_upload,
    deferred_test,
    gather,
    pgblobs_cli,
    pgblobs_command,
    sql,
    token_header,
    wait_until,
    write,
)
from tests.processes import ServeProcess
from tests.reliability.clients import Client

pytestmark = pytest.mark.slow

# Blobs of one user made at once, as import-fs would: rows, flags and large
# objects from one statement (pgblobs.insert_blobs). Every tenth blob is in
# the namespace mail; every fifth has flags.
SEED_BLOBS = """
    SELECT pgblobs.insert_blobs(
        array_agg(%(user)s::text),
        array_agg(CASE WHEN i %% 10 = 0 THEN 'mail' ELSE 'default' END),
        array_agg(%(prefix)s || i),
        array_agg(content),
        array_agg('tag'::text),
        array_agg(sha256(content)),
        array_agg(CASE WHEN i %% 5 = 0 THEN 'PENDING' WHEN i %% 5 = 1 THEN 'PENDING,PROCESSED'
                       ELSE '' END),
        '{}', '{}')
    FROM (SELECT i, convert_to(repeat('x', %(size)s) || i, 'UTF8') AS content
          FROM generate_series(1, %(count)s) AS i) AS items
"""
SEED_TOMBSTONES = """
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, size, created_at, deleted_at)
    SELECT %(user)s, 'default', 'gone-' || i, 0, now(), now()
    FROM generate_series(1, %(count)s) AS i
"""
# What pgblobs holds of a user, table by table; the large objects are those
# its rows reference.
HOLDINGS = {
    "blobs": "SELECT count(*) FROM pgblobs.blobs WHERE user_id = %(user)s",
    "flags": "SELECT count(*) FROM pgblobs.blob_flags WHERE user_id = %(user)s",
    "tokens": "SELECT count(*) FROM pgblobs.tokens WHERE user_id = %(user)s",
    "quotas": "SELECT count(*) FROM pgblobs.quotas WHERE user_id = %(user)s",
    "usage": "SELECT count(*) FROM pgblobs.usage WHERE user_id = %(user)s",
}
# Everything of a user that must survive another user's deletion, row by row.
SNAPSHOT = """
    SELECT b.namespace, b.blob_id, b.size, encode(b.sha256, 'hex'), b.deleted_at IS NULL,
           ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f WHERE f.blob_row = b.id
                 ORDER BY f.flag),
           CASE WHEN b.lo_oid IS NOT NULL THEN md5(lo_get(b.lo_oid)) END
    FROM pgblobs.blobs AS b WHERE b.user_id = %(user)s AND b.blob_id NOT LIKE 'traffic-%%'
    ORDER BY 1, 2
"""
USAGE = "SELECT namespace, live_blobs, live_bytes FROM pgblobs.usage WHERE user_id = %(user)s"
# The longest a request of the other user may take while the deletion runs.
STALL_BOUND = 3.0


def seed(dsn, user, blobs, large, tombstones):
    """``blobs`` small and ``large`` large blobs (beyond INLINE_LIMIT) of
    ``user``, and ``tombstones``; a quota override."""
    for first in range(0, blobs, 5000):
        sql(
            dsn,
            SEED_BLOBS,
            {
                "user": user,
                "prefix": f"small-{first}-",
                "size": 10,
                "count": min(5000, blobs - first),
            },
        )
    sql(dsn, SEED_BLOBS, {"user": user, "prefix": "large-", "size": INLINE_LIMIT, "count": large})
    sql(dsn, SEED_TOMBSTONES, {"user": user, "count": tombstones})
    sql(dsn, "INSERT INTO pgblobs.quotas VALUES (%(user)s, 10000000000)", {"user": user})


def holdings(dsn, user):
    return {kind: sql(dsn, query, {"user": user})[0][0] for kind, query in HOLDINGS.items()}


def large_objects_of(dsn, user):
    return sql(
        dsn,
        "SELECT count(*) FROM pgblobs.blobs AS b JOIN pg_largeobject_metadata AS m "
        "ON m.oid = b.lo_oid WHERE b.user_id = %(user)s",
        {"user": user},
    )[0][0]


def remaining(dsn, user):
    """Live blobs, tombstones and live bytes ``user`` still has."""
    return tuple(
        sql(
            dsn,
            "SELECT count(*) FILTER (WHERE deleted_at IS NULL), "
            "count(*) FILTER (WHERE deleted_at IS NOT NULL), "
            "coalesce(sum(size) FILTER (WHERE deleted_at IS NULL), 0) "
            "FROM pgblobs.blobs WHERE user_id = %(user)s",
            {"user": user},
        )[0]
    )


def batches_running(dsn):
    """Server processes running (or last having run) delete_account_batch."""
    return sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query LIKE '%%WITH doomed AS%%' AND pid <> pg_backend_pid()",
    )[0][0]


def reported(output):
    """The counts `user delete` printed, by kind."""
    counts = {}
    for line in output.splitlines():
        kind, colon, value = line.strip().partition(": ")
        if colon and line.startswith("  "):
            counts[kind] = int(value.split()[0])
    return counts


class Traffic(threading.Thread):
    """Another user writing and reading against the node the whole time: each
    request's status and seconds are kept."""

    def __init__(self, client, existing):
        super().__init__(daemon=True)
        self.client = client
        self.existing = existing  # (blob id, content) the user had before
        self.stop = threading.Event()
        self.failures = []
        self.slowest = 0.0
        self.requests = 0
        self.written = {}

    def timed(self, expected, method, path, body=None):
        started = time.monotonic()
        status, _, answer = self.client.request(method, path, body=body)
        self.slowest = max(self.slowest, time.monotonic() - started)
        self.requests += 1
        if status != expected:
            self.failures.append((method, path, status, answer[:200]))
        return answer

    def run(self):
        turn = 0
        while not self.stop.is_set():
            turn += 1
            blob_id = f"traffic-{turn}"
            # Every fifth write is large: it streams, under the user's lock.
            data = (b"%d" % turn) * (INLINE_LIMIT // 2 if turn % 5 == 0 else 100)
            self.timed(200, "PUT", f"/blobs/bob/{blob_id}", data)
            self.written[blob_id] = data
            if self.timed(200, "GET", f"/blobs/bob/{blob_id}") != data:
                self.failures.append(("read back", blob_id))
            old_id, old_content = self.existing[turn % len(self.existing)]
            if self.timed(200, "GET", f"/blobs/bob/{old_id}") != old_content:
                self.failures.append(("read", old_id))


def start_deletion(dsn, user):
    """`pgblobs user delete USER --yes` started, its output read by the caller."""
    return subprocess.Popen(
        pgblobs_command("user", "delete", user, "--yes", "--dsn", dsn),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_deleting_an_account_interrupted_and_resumed_while_another_user_is_served(dsn):
    seed(dsn, "alice", blobs=20_000, large=30, tombstones=300)
    seed(dsn, "bob", blobs=200, large=3, tombstones=20)
    alice_token, bob_token = create_token(dsn, "alice"), create_token(dsn, "bob")
    create_token(dsn, "alice")
    before = holdings(dsn, "alice")
    assert before["blobs"] == 20_330 and before["tokens"] == 2 and before["flags"] > 0
    assert large_objects_of(dsn, "alice") == 20_030
    bob_before = (sql(dsn, SNAPSHOT, {"user": "bob"}), holdings(dsn, "bob"))
    bob_usage = sql(dsn, USAGE, {"user": "bob"})

    node = ServeProcess("--dsn", dsn)
    try:
        alice = Client(node.url, "alice", alice_token)
        assert alice.get("small-0-7")[0] == 200  # the node now remembers the token
        existing = [("small-0-3", b"x" * 10 + b"3"), ("large-2", b"x" * INLINE_LIMIT + b"2")]
        traffic = Traffic(Client(node.url, "bob", bob_token), existing)
        traffic.start()
        wait_until(lambda: traffic.requests > 20, "serving bob")

        deletion = start_deletion(dsn, "alice")
        started = time.monotonic()
        # The tokens go first, before any batch: the user's next request is refused.
        wait_until(lambda: alice.get("small-0-7")[0] == 401, "refusing alice", timeout=10)
        refused_after = time.monotonic() - started
        # Killed once it has removed some batches (SIGKILL: no chance to tidy up).
        wait_until(lambda: remaining(dsn, "alice")[0] < 20_000, "deleting", every=0.01)
        deletion.kill()
        deletion.wait(30)
        # Its server process finishes (and commits) the batch it was running.
        wait_until(lambda: not batches_running(dsn), "the killed run's last batch to end")
        left = remaining(dsn, "alice")
        assert sum(left[:2]) > 0, "the deletion was over before it could be interrupted"
        assert alice.get("small-0-7")[0] == 401
        large_objects_left = large_objects_of(dsn, "alice")
        flags_left = holdings(dsn, "alice")["flags"]

        started = time.monotonic()
        resumed = pgblobs_cli("user", "delete", "alice", "--yes", "--dsn", dsn)
        resumed_in = time.monotonic() - started
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming an earlier, interrupted deletion" in resumed.stdout
        assert "the provider must end the user's sessions" in resumed.stdout
        assert reported(resumed.stdout) == {
            "blobs": left[0],
            "tombstones": left[1],
            "large objects": large_objects_left,
            "bytes": left[2],
            "flags": flags_left,
            "tokens": 0,  # revoked by the first run
            "quota rows": 1,
            "usage rows": 2,  # the namespaces default and mail
            "uploads": 0,
            "finished uploads": 0,
        }
        assert alice.put("again", b"new")[0] == 401
        wait_until(lambda: traffic.requests > 200, "serving bob after the deletion")
    finally:
        traffic.stop.set()
        traffic.join(60)
        node.stop()

    assert traffic.failures == []
    assert traffic.slowest < STALL_BOUND, f"a request of bob took {traffic.slowest:.2f} s"
    print(
        f"alice refused {refused_after:.2f} s after the command started; {sum(left[:2])} rows "
        f"left at the kill, removed by the second run in {resumed_in:.2f} s; bob: "
        f"{traffic.requests} requests, the slowest {traffic.slowest:.3f} s"
    )
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)
    assert sql(dsn, "SELECT emptied_at IS NOT NULL FROM pgblobs.closed_accounts") == [(True,)]
    assert sql(dsn, SNAPSHOT, {"user": "bob"}) == bob_before[0]
    assert holdings(dsn, "bob") == dict(
        bob_before[1], blobs=bob_before[1]["blobs"] + len(traffic.written)
    )
    traffic_ids = sql(
        dsn,
        "SELECT blob_id, md5(lo_get(lo_oid)) FROM pgblobs.blobs "
        "WHERE user_id = 'bob' AND blob_id LIKE 'traffic-%%' AND deleted_at IS NULL",
    )
    assert {blob_id: digest for blob_id, digest in traffic_ids} == {
        blob_id: hashlib.md5(data).hexdigest() for blob_id, data in traffic.written.items()
    }
    traffic_bytes = sum(len(data) for data in traffic.written.values())
    assert sql(dsn, USAGE + " AND namespace = 'default'", {"user": "bob"})[0][1:] == tuple(
        count + extra
        for count, extra in zip(
            next(row for row in bob_usage if row[0] == "default")[1:],
            (len(traffic.written), traffic_bytes),
            strict=True,
        )
    )
    fsck = pgblobs_cli("fsck", "--dsn", dsn)
    assert fsck.returncode == 0 and fsck.stdout.strip().endswith("clean"), fsck.stdout
    again = pgblobs_cli("user", "delete", "alice", "--yes", "--dsn", dsn)
    assert again.returncode == 0 and "holds nothing" in again.stdout, again.stdout
    refused = pgblobs_cli("token", "create", "alice", "--dsn", dsn)
    assert refused.returncode == 1 and "is closed" in refused.stderr, refused.stderr


def test_a_write_in_flight_when_the_account_closes_is_refused(dsn):
    """An upload that passed its token check before the deletion began
    cannot commit its blob after it: it gets 401, and nothing is left."""
    seed(dsn, "alice", blobs=10, large=1, tombstones=1)
    token = create_token(dsn, "alice")
    node = ServeProcess("--dsn", dsn)
    try:
        upload = socket.create_connection(("127.0.0.1", node.port))
        size = 2 * INLINE_LIMIT
        upload.sendall(
            b"PUT /blobs/alice/late HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + token_header("alice", token).encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % size
            + b"k" * (size // 2)
        )
        # Past its token check: its transaction is writing the large object.
        wait_until(lambda: uploads_in_progress(dsn) > 0, "uploading")
        done = pgblobs_cli("user", "delete", "alice", "--yes", "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        upload.sendall(b"k" * (size - size // 2))
        upload.settimeout(30)
        answer = upload.recv(65536)
        upload.close()
    finally:
        node.stop()
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"the user's account is closed" in answer
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)


def uploads_in_progress(dsn):
    """Transactions of the node waiting for a client between two writes."""
    return sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND state = 'idle in transaction'",
    )[0][0]


@deferred_test
async def test_a_small_write_of_a_closed_account_fails_alone_in_its_group_commit(backend, dsn):
    sql(dsn, "INSERT INTO pgblobs.closed_accounts (user_id) VALUES ('alice')")
    outcomes = await gather(
        *[
            write(backend, user, f"blob-{i}", b"small")
            for i in range(3)
            for user in ("alice", "bob")
        ]
    )
    assert [type(outcome) for outcome in outcomes[0::2]] == [AccountClosed] * 3
    assert outcomes[1::2] == [None] * 3
    assert holdings(dsn, "bob")["blobs"] == 3 and holdings(dsn, "alice")["blobs"] == 0


def test_without_yes_and_without_a_terminal_it_refuses(dsn):
    seed(dsn, "alice", blobs=3, large=0, tombstones=0)
    create_token(dsn, "alice")
    before = holdings(dsn, "alice")
    done = subprocess.run(
        pgblobs_command("user", "delete", "alice", "--dsn", dsn),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "pass --yes" in done.stderr and "not a terminal" in done.stderr
    assert holdings(dsn, "alice") == before
    assert sql(dsn, "SELECT count(*) FROM pgblobs.closed_accounts")[0][0] == 0


def answered(dsn, answer):
    """`user delete alice` on a terminal, answering its question with
    ``answer``: the exit status, and what the terminal showed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        pgblobs_command("user", "delete", "alice", "--dsn", dsn),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)  # the child's end: reading ours fails once it exits
    shown = b""

    def more():
        assert select.select([controller], [], [], 60)[0], f"the terminal is silent: {shown}"
        return os.read(controller, 1024)

    try:
        while b"[y/N]" not in shown:
            shown += more()
        os.write(controller, answer + b"\n")
        while chunk := more():
            shown += chunk
    except OSError:
        pass  # the child exited (Linux says EIO)
    finally:
        os.close(controller)
    return process.wait(60), shown.decode().replace("\r\n", "\n")


def test_on_a_terminal_it_asks_first(dsn):
    seed(dsn, "alice", blobs=3, large=1, tombstones=2)
    before = holdings(dsn, "alice")
    status, shown = answered(dsn, b"n")
    assert "4 blob(s)" in shown and "2 tombstone(s)" in shown and "a quota override" in shown
    assert status == 1 and "nothing deleted" in shown
    assert holdings(dsn, "alice") == before
    status, shown = answered(dsn, b"y")
    assert status == 0, shown
    assert reported(shown)["blobs"] == 4 and reported(shown)["tombstones"] == 2
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)


def test_a_user_with_nothing_is_said_so(dsn):
    done = pgblobs_cli("user", "delete", "nobody", "--yes", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert "holds nothing of this user (nothing to delete)" in done.stdout
    assert sql(dsn, "SELECT count(*) FROM pgblobs.closed_accounts")[0][0] == 0


def test_ctrl_c_says_how_to_finish(dsn):
    seed(dsn, "alice", blobs=10_000, large=0, tombstones=0)
    deletion = start_deletion(dsn, "alice")
    wait_until(lambda: remaining(dsn, "alice")[0] < 10_000, "deleting", every=0.01)
    deletion.send_signal(signal.SIGINT)
    _, stderr = deletion.communicate(timeout=60)
    assert deletion.returncode == 1, stderr
    assert "interrupted" in stderr and "run `pgblobs user delete alice --yes` again" in stderr
    assert 0 < remaining(dsn, "alice")[0] < 10_000
    finished = pgblobs_cli("user", "delete", "alice", "--yes", "--dsn", dsn)
    assert finished.returncode == 0 and "resuming" in finished.stdout, finished.stderr
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)


def test_rows_a_write_inserted_before_the_account_closed_are_removed_at_the_end(dsn):
    """A writer that inserted its rows (under the user's lock) before the
    account closed commits them whenever it likes: the last step waits for
    that lock, and removes what it finds then. (The rows are in a namespace
    of their own: in another, the batches would wait for the writer on its
    usage counters.)"""
    seed(dsn, "alice", blobs=1000, large=0, tombstones=0)
    flags = holdings(dsn, "alice")["flags"]
    writer = psycopg2.connect(dsn)
    try:
        with writer.cursor() as cursor:
            cursor.execute(
                "SELECT pgblobs.insert_blobs('{alice}', '{late}', '{late}', '{late}', "
                "'{tag}', ARRAY[sha256('late')], '{PENDING}', '{}', '{}')"
            )
        deletion = start_deletion(dsn, "alice")
        wait_until(lambda: waiting_for_a_user_lock(dsn), "the last step waiting for the lock")
        assert remaining(dsn, "alice")[:2] == (0, 0)
        writer.commit()
        stdout, stderr = deletion.communicate(timeout=60)
    finally:
        writer.close()
    assert deletion.returncode == 0, stderr
    assert reported(stdout)["blobs"] == 1001 and reported(stdout)["large objects"] == 1001
    assert reported(stdout)["flags"] == flags + 1
    assert reported(stdout)["usage rows"] == 3
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)


def waiting_for_a_user_lock(dsn):
    return sql(
        dsn,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
    )[0][0]


def uploads_of(dsn, user):
    """The ids of ``user``'s uploads in progress, and of its finished ones."""
    return [
        [
            row[0]
            for row in sql(
                dsn,
                f"SELECT upload_id FROM pgblobs.{table} WHERE user_id = %(user)s ORDER BY 1",
                {"user": user},
            )
        ]
        for table in ("uploads", "finished_uploads")
    ]


def holding(dsn, upload_id):
    """A second session holding an upload's lock, as a PATCH in progress does."""
    patch = psycopg2.connect(dsn)
    with patch.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(pgblobs.upload_lock_key(%s))", (upload_id,))
    return patch


def tried_uploads(dsn):
    """Whether a deletion has run (or is running) end_account_uploads."""
    return sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query LIKE '%%WITH candidates AS%%' AND pid <> pg_backend_pid()",
    )[0][0]


def test_uploads_in_progress_go_with_the_account(dsn):
    seed(dsn, "alice", blobs=3, large=1, tombstones=0)
    create_upload(dsn, "a-empty", 10, user="alice")
    create_upload(dsn, "a-half", 10, b"hello", user="alice")
    create_upload(dsn, "a-done", 0, user="alice")  # of no bytes: finished at once
    create_upload(dsn, "b-half", 10, b"hello", user="bob")
    assert uploads_of(dsn, "alice") == [["a-empty", "a-half"], ["a-done"]]
    done = pgblobs_cli("user", "delete", "alice", "--yes", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    counts = reported(done.stdout)
    assert counts["uploads"] == 2 and counts["finished uploads"] == 1, done.stdout
    # Four seeded blobs, the finished upload's blob, and the two uploads in progress.
    assert counts["blobs"] == 5 and counts["large objects"] == 7
    assert uploads_of(dsn, "alice") == [[], []]
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)
    assert uploads_of(dsn, "bob") == [["b-half"], []]
    with pytest.raises(psycopg2.Error) as refused:
        create_upload(dsn, "a-late", 10, user="alice")
    assert refused.value.pgcode == "PB410"  # the trigger uploads_refuse_closed_accounts
    again = pgblobs_cli("user", "delete", "alice", "--yes", "--dsn", dsn)
    assert "its account was deleted already" in again.stdout


def test_an_upload_a_patch_holds_is_tried_again_until_it_is_free(dsn):
    seed(dsn, "alice", blobs=3, large=0, tombstones=0)
    create_upload(dsn, "a-free", 10, b"hello", user="alice")
    create_upload(dsn, "a-held", 10, b"hello", user="alice")
    patch = holding(dsn, "a-held")
    try:
        deletion = start_deletion(dsn, "alice")
        wait_until(lambda: tried_uploads(dsn), "the deletion at the uploads")
        wait_until(lambda: uploads_of(dsn, "alice")[0] == ["a-held"], "a-free removed")
        assert deletion.poll() is None
        assert remaining(dsn, "alice") == (0, 0, 0)
    finally:
        patch.close()  # the PATCH ends: its session lock goes with it
    stdout, stderr = deletion.communicate(timeout=60)
    assert deletion.returncode == 0, stderr
    assert reported(stdout)["uploads"] == 2 and reported(stdout)["large objects"] == 5
    assert uploads_of(dsn, "alice") == [[], []]
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)


def test_an_upload_held_past_the_wait_is_said_so(dsn):
    seed(dsn, "alice", blobs=3, large=0, tombstones=0)
    create_upload(dsn, "a-held", 10, b"hello", user="alice")
    patch = holding(dsn, "a-held")
    try:
        done = pgblobs_cli(
            "user", "delete", "alice", "--yes", "--held-upload-wait", "0.5", "--dsn", dsn
        )
    finally:
        patch.close()
    assert done.returncode == 1
    assert (
        "pgblobs: 1 upload(s) of alice still held by a PATCH in progress after 0.5 s; the "
        "account is closed and its blobs are deleted: run `pgblobs user delete alice --yes` "
        "again once the PATCH ends"
    ) in done.stderr, done.stderr
    assert remaining(dsn, "alice") == (0, 0, 0)
    assert uploads_of(dsn, "alice") == [["a-held"], []]
    finished = pgblobs_cli("user", "delete", "alice", "--yes", "--dsn", dsn)
    assert finished.returncode == 0 and "resuming" in finished.stdout, finished.stderr
    assert reported(finished.stdout)["uploads"] == 1
    assert uploads_of(dsn, "alice") == [[], []]
    assert holdings(dsn, "alice") == dict.fromkeys(HOLDINGS, 0)
