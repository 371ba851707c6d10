"""A second `pgblobs import-fs` brings pgblobs level with a Soledad store that
changed since the first: deletions become tombstones, flags files set flags,
and what the source does not contradict (an unchanged blob, a blob written or
deleted through pgblobs' API) is left alone."""

import hashlib
import os
import time

from pgblobs.db.sync import SyncConnection
from pgblobs.ops import importfs
from tests.helpers import content, deferred_test, pgblobs_cli, sql, write
from tests.ops.soledad_fs import SoledadStore

LARGE = 600_000  # over versions.INLINE_LIMIT: stored in a large object of its own

LIVE_ROWS = """
    SELECT b.user_id, b.namespace, b.blob_id, encode(sha256(lo_get(b.lo_oid)), 'hex'),
           ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f
                 WHERE f.blob_row = b.id ORDER BY f.flag)
    FROM pgblobs.blobs AS b WHERE b.deleted_at IS NULL ORDER BY 1, 2, 3
"""
TOMBSTONES = """
    SELECT user_id, namespace, blob_id FROM pgblobs.blobs
    WHERE deleted_at IS NOT NULL ORDER BY 1, 2, 3
"""
EVERY_ROW = """
    SELECT b.id, b.lo_oid, b.deleted_at, b.created_at,
           ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f
                 WHERE f.blob_row = b.id ORDER BY f.flag)
    FROM pgblobs.blobs AS b ORDER BY b.id
"""


def import_fs(root, dsn):
    """A run of import-fs that must succeed; its summary line and its seconds."""
    started = time.monotonic()
    done = pgblobs_cli("import-fs", str(root), "--dsn", dsn)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, seconds


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def live_bytes(dsn):
    return sql(
        dsn, "SELECT coalesce(sum(live_bytes), 0), coalesce(sum(live_blobs), 0) FROM pgblobs.usage"
    )[0]


def large_objects(dsn):
    return sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0]


def fsck_clean(dsn):
    check = pgblobs_cli("fsck", "--dsn", dsn)
    assert check.returncode == 0, check.stdout + check.stderr


def test_blobs_deleted_in_the_source_become_tombstones_and_free_their_content(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    store.write("alice", "default", "small", [b"a small blob"])
    store.write("alice", "default", "large", [content(LARGE)])
    store.write("alice", "default", "stays", [b"stays"])
    store.set_flags("alice", "default", "large", ["PENDING"])
    import_fs(tmp_path, dsn)
    assert live_bytes(dsn) == (len(b"a small blob") + LARGE + len(b"stays"), 3)
    assert large_objects(dsn) == 3

    store.delete("alice", "default", "small")
    store.delete("alice", "default", "large")
    summary, _ = import_fs(tmp_path, dsn)

    assert "tombstoned 2;" in summary and "unchanged 1;" in summary, summary
    assert sql(dsn, TOMBSTONES) == [("alice", "default", "large"), ("alice", "default", "small")]
    assert sql(dsn, LIVE_ROWS) == [("alice", "default", "stays", sha256_hex(b"stays"), [])]
    assert live_bytes(dsn) == (len(b"stays"), 1)
    assert large_objects(dsn) == 1  # the deleted blobs' contents are unlinked
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blob_flags") == [(0,)]
    fsck_clean(dsn)


def test_flags_changed_in_the_source_are_updated(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    for blob_id in ("flagged", "unflagged", "cleared", "never"):
        store.write("bob", "mail", blob_id, [blob_id.encode()])
    store.set_flags("bob", "mail", "flagged", ["PENDING"])
    store.set_flags("bob", "mail", "cleared", ["PENDING", "PROCESSING"])
    import_fs(tmp_path, dsn)

    store.set_flags("bob", "mail", "flagged", ["PROCESSED", "PENDING"])
    store.set_flags("bob", "mail", "unflagged", ["FAILED"])
    store.set_flags("bob", "mail", "cleared", [])
    summary, _ = import_fs(tmp_path, dsn)

    assert "flags updated 3;" in summary and "unchanged 1;" in summary, summary
    assert [(row[2], row[4]) for row in sql(dsn, LIVE_ROWS)] == [
        ("cleared", []),
        ("flagged", ["PENDING", "PROCESSED"]),
        ("never", []),
        ("unflagged", ["FAILED"]),
    ]


def test_a_second_run_over_an_unchanged_source_changes_nothing_and_reads_no_content(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    count = 2000
    total = 0
    for n in range(count):
        data = content(LARGE if n % 100 == 0 else 10_000, seed=n)
        total += len(data)
        blob_id = f"{n:06d}{'cafe' * 4}"
        store.write(f"user{n % 5}", "default", blob_id, [data])
        if n % 3 == 0:
            store.set_flags(f"user{n % 5}", "default", blob_id, ["PENDING"])
        if n % 10 == 0:
            store.delete(f"user{n % 5}", "default", blob_id)
    deleted = count // 10
    first, first_seconds = timed_import(tmp_path, dsn)
    assert (first.imported, first.tombstones) == (count - deleted, deleted)
    rows = sql(dsn, EVERY_ROW)

    second, second_seconds = timed_import(tmp_path, dsn)

    assert second == importfs.ImportReport(unchanged=count)
    assert sql(dsn, EVERY_ROW) == rows
    print(
        f"\nimport-fs over {count} blobs ({total / 2**20:.1f} MiB, {deleted} deleted), "
        f"in process: first run {first_seconds:.2f} s, second run {second_seconds:.2f} s "
        f"({second_seconds / first_seconds:.0%} of the first)"
    )
    # And the command says so.
    summary, _ = import_fs(tmp_path, dsn)
    assert summary.startswith("imported 0 blob(s) (0 B read) and 0 tombstone(s);"), summary
    assert f"replaced 0; tombstoned 0; flags updated 0; unchanged {count}; kept 0;" in summary
    assert sql(dsn, EVERY_ROW) == rows


def timed_import(root, dsn):
    """import_tree as `import-fs --jobs 2` runs it, without the command's
    start-up; its report and its seconds."""
    connections = [SyncConnection.connect_at_head(dsn) for _ in range(2)]
    try:
        started = time.monotonic()
        report = importfs.import_tree(connections, root)
        return report, time.monotonic() - started
    finally:
        for connection in connections:
            connection.close()


@deferred_test
async def test_what_the_api_wrote_or_deleted_is_left_alone(backend, dsn, tmp_path):
    store = SoledadStore(tmp_path)
    store.write("carol", "default", "imported", [b"from soledad"])
    store.write("carol", "default", "rewritten", [b"soledad's old copy"])
    store.write("carol", "default", "api-deleted", [b"deleted through pgblobs"])
    os.utime(store.path("carol", "default", "rewritten"), (1_700_000_000, 1_700_000_000))
    import_fs(tmp_path, dsn)
    # After the import, through pgblobs' API: a blob the source never had, a
    # newer copy of one it has, and a delete.
    await write(backend, "carol", "api-only", b"written through pgblobs")
    await backend.delete_blob("carol", "rewritten")
    await write(backend, "carol", "rewritten", b"pgblobs' newer copy")
    await backend.delete_blob("carol", "api-deleted")
    before = sql(dsn, EVERY_ROW)

    summary, _ = import_fs(tmp_path, dsn)

    assert "unchanged 1; kept 2; failed 0" in summary, summary
    assert "kept pgblobs' copy of" in summary
    assert sql(dsn, EVERY_ROW) == before
    assert sql(dsn, LIVE_ROWS) == [
        ("carol", "default", "api-only", sha256_hex(b"written through pgblobs"), []),
        ("carol", "default", "imported", sha256_hex(b"from soledad"), []),
        ("carol", "default", "rewritten", sha256_hex(b"pgblobs' newer copy"), []),
    ]


def test_a_copy_taken_while_soledad_wrote_the_file_is_replaced(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    whole = content(LARGE, seed=3)
    half = LARGE // 2
    imports = []
    # The first import runs while the blob is half written, as Soledad writes
    # it in place; then the rest arrives.
    store.write(
        "dave",
        "default",
        "torn",
        [whole[:half], whole[half:]],
        between_chunks=lambda: imports.append(import_fs(tmp_path, dsn)) if not imports else None,
    )
    assert sql(dsn, "SELECT size FROM pgblobs.blobs") == [(half,)]

    summary, _ = import_fs(tmp_path, dsn)

    assert "replaced 1;" in summary, summary
    assert sql(dsn, LIVE_ROWS) == [("dave", "default", "torn", sha256_hex(whole), [])]
    assert live_bytes(dsn) == (LARGE, 1)
    assert large_objects(dsn) == 1
    fsck_clean(dsn)
