"""`pgblobs import-fs` takes the per-user lock the API's writes take, and only
for its row inserts: never while a large content streams into its large object."""

import subprocess
import time

import psycopg2

from tests.helpers import content, pgblobs_command, sql
from tests.ops.test_import_fs_files import DEADLINE, place, stored

WAITING = """
    SELECT pid FROM pg_stat_activity
    WHERE wait_event_type = 'Lock' AND wait_event = %s AND pid <> pg_backend_pid()
"""


def start_import(root, dsn):
    return subprocess.Popen(
        pgblobs_command("import-fs", str(root), "--dsn", dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def backend_waiting(dsn, importer, lock_kind):
    """The pid of the import's backend once it waits for a ``lock_kind`` lock
    (pg_stat_activity's wait_event); fails if the import ends first."""
    deadline = time.monotonic() + DEADLINE
    while not (waiting := sql(dsn, WAITING, (lock_kind,))):
        assert importer.poll() is None, f"import-fs never waited: {importer.communicate()}"
        assert time.monotonic() < deadline, "import-fs neither waited nor ended"
        time.sleep(0.05)
    return waiting[0][0]


def finished(importer):
    stdout, stderr = importer.communicate(timeout=DEADLINE)
    assert importer.returncode == 0, stdout + stderr
    return stdout


def holding(dsn, statement):
    """A connection in a transaction that has run ``statement`` and holds its locks."""
    connection = psycopg2.connect(dsn)
    with connection.cursor() as cursor:
        cursor.execute(statement)
    return connection


def test_an_import_waits_for_the_users_lock_before_it_inserts_a_row(dsn, tmp_path):
    place(tmp_path, "alice", "default", "small", b"tiny")
    place(tmp_path, "alice", "default", "large", content(600_000))
    api_write = holding(dsn, "SELECT pg_advisory_xact_lock(pgblobs.user_lock_key('alice'))")
    try:
        importer = start_import(tmp_path, dsn)
        backend_waiting(dsn, importer, "advisory")
        assert stored(dsn) == []
    finally:
        api_write.commit()
        api_write.close()
    assert "imported 2 blob(s)" in finished(importer)
    assert sorted(stored(dsn)) == [
        ("alice", "default", "large", False),
        ("alice", "default", "small", False),
    ]


def test_the_users_lock_is_not_held_while_a_large_content_streams(dsn, tmp_path):
    place(tmp_path, "alice", "default", "large", content(600_000))
    # Writes into large objects wait while another transaction holds pg_largeobject.
    stalled_storage = holding(dsn, "LOCK TABLE pg_largeobject IN SHARE MODE")
    try:
        importer = start_import(tmp_path, dsn)
        streaming = backend_waiting(dsn, importer, "relation")
        assert sql(
            dsn,
            "SELECT relation::regclass::text FROM pg_locks WHERE pid = %s AND NOT granted",
            (streaming,),
        ) == [("pg_largeobject",)]
        assert sql(
            dsn,
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'",
            (streaming,),
        ) == [(0,)]
    finally:
        stalled_storage.commit()
        stalled_storage.close()
    assert "imported 1 blob(s)" in finished(importer)
    assert stored(dsn) == [("alice", "default", "large", False)]


def test_a_blob_the_api_deletes_while_the_import_waits_stays_deleted(dsn, tmp_path):
    # The import has found no row named "gone" and waits for alice's lock;
    # meanwhile the API writes "gone" and deletes it, leaving a tombstone.
    place(tmp_path, "alice", "default", "gone", b"old copy")
    place(tmp_path, "alice", "default", "other", b"imported")
    api_write = holding(dsn, "SELECT pg_advisory_xact_lock(pgblobs.user_lock_key('alice'))")
    try:
        importer = start_import(tmp_path, dsn)
        backend_waiting(dsn, importer, "advisory")
        with api_write.cursor() as cursor:
            cursor.execute(
                "INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, size, deleted_at) "
                "VALUES ('alice', 'default', 'gone', 0, now())"
            )
    finally:
        api_write.commit()
        api_write.close()
    output = finished(importer)
    assert (
        "imported 1 blob(s)" in output
        and "gone: deleted in pgblobs after the source wrote it" in output
    )
    # The import's older copy does not revive what the user deleted.
    assert sorted(stored(dsn)) == [
        ("alice", "default", "gone", True),
        ("alice", "default", "other", False),
    ]
