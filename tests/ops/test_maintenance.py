"""`pgblobs purge` and `pgblobs fsck` on planted problems."""

import psycopg2

from tests.helpers import content, create_upload, deferred_test, pgblobs_cli, read, sql, write


@deferred_test
async def test_purge_removes_only_old_tombstones(backend, dsn):
    for name in ("old1", "old2", "recent", "alive"):
        await write(backend, "alice", name, name.encode())
    for name in ("old1", "old2", "recent"):
        await backend.delete_blob("alice", name)
    sql(
        dsn,
        "UPDATE pgblobs.blobs SET deleted_at = now() - interval '40 days' "
        "WHERE blob_id LIKE 'old%%'",
    )
    dry = pgblobs_cli("purge", "--older-than", "30d", "--dry-run", "--dsn", dsn)
    assert dry.returncode == 0 and "would remove 2" in dry.stdout
    assert "more than 30 days ago" in dry.stdout
    assert sorted(await backend.list_blobs("alice", deleted=True)) == ["old1", "old2", "recent"]
    done = pgblobs_cli("purge", "--older-than", "30d", "--dsn", dsn)
    assert done.returncode == 0 and "removed 2" in done.stdout
    assert await backend.list_blobs("alice", deleted=True) == ["recent"]
    assert await backend.list_blobs("alice") == ["alive"]
    bad = pgblobs_cli("purge", "--older-than", "soon", "--dsn", dsn)
    assert bad.returncode != 0 and "duration" in bad.stderr


@deferred_test
async def test_fsck_finds_and_repairs_an_orphan_and_a_broken_row(backend, dsn):
    await write(backend, "alice", "fine", content(400_000))
    await write(backend, "alice", "broken", b"will lose its content")
    await backend.set_flags("alice", "broken", ["PENDING"])
    assert pgblobs_cli("fsck", "--verify-content", "--dsn", dsn).returncode == 0
    orphan = sql(dsn, "SELECT lo_from_bytea(0, 'nobody''s')")[0][0]
    sql(dsn, "SELECT lo_unlink(lo_oid) FROM pgblobs.blobs WHERE blob_id = 'broken'")
    found = pgblobs_cli("fsck", "--dsn", dsn)
    assert found.returncode == 1
    assert f"orphan large object {orphan}" in found.stdout
    assert "alice/default/broken" in found.stdout
    repaired = pgblobs_cli("fsck", "--repair", "--dsn", dsn)
    assert repaired.returncode == 1 and "repaired" in repaired.stdout
    assert pgblobs_cli("fsck", "--dsn", dsn).returncode == 0
    assert await backend.list_blobs("alice", deleted=True) == ["broken"]
    assert await backend.list_blobs("alice", filter_flag="PENDING") == []
    assert await read(backend, "alice", "fine") == content(400_000)


@deferred_test
async def test_fsck_verify_content_reports_changed_bytes(backend, dsn):
    await write(backend, "alice", "tampered", content(1000))
    sql(dsn, "SELECT lo_put(lo_oid, 10, 'XX') FROM pgblobs.blobs WHERE blob_id = 'tampered'")
    assert pgblobs_cli("fsck", "--dsn", dsn).returncode == 0  # rows and objects agree
    verified = pgblobs_cli("fsck", "--verify-content", "--dsn", dsn)
    assert verified.returncode == 1
    assert "alice/default/tampered: sha256 differs" in verified.stdout


@deferred_test
async def test_fsck_recounts_usage_counters_that_drifted(backend, dsn):
    await write(backend, "alice", "a", content(1000))
    sql(dsn, "UPDATE pgblobs.usage SET live_bytes = 5 WHERE user_id = 'alice'")
    found = pgblobs_cli("fsck", "--dsn", dsn)
    assert found.returncode == 1 and "usage counters of alice/default" in found.stdout
    assert pgblobs_cli("fsck", "--repair", "--dsn", dsn).returncode == 1
    assert pgblobs_cli("fsck", "--dsn", dsn).returncode == 0
    assert await backend.get_total_storage("alice") == 1


def uploads(dsn):
    return [row[0] for row in sql(dsn, "SELECT upload_id FROM pgblobs.uploads ORDER BY 1")]


def test_fsck_knows_uploads_in_progress_and_repairs_abandoned_and_broken_ones(dsn):
    fine = create_upload(dsn, "fine", 100, b"ten bytes!")
    assert pgblobs_cli("fsck", "--repair", "--dsn", dsn).stdout.strip() == "clean"
    create_upload(dsn, "old", 100, b"abc")
    sql(
        dsn,
        "UPDATE pgblobs.uploads SET expires_at = now() - interval '1 hour' WHERE upload_id = 'old'",
    )
    create_upload(dsn, "short", 100, b"ten bytes!")
    sql(dsn, "UPDATE pgblobs.uploads SET upload_offset = 50 WHERE upload_id = 'short'")
    lost = create_upload(dsn, "lost", 100, b"abc")
    sql(dsn, "SELECT lo_unlink(%(oid)s)", {"oid": lost})
    found = pgblobs_cli("fsck", "--dsn", dsn)
    assert found.returncode == 1
    lines = found.stdout.splitlines()
    assert "upload lost of alice/default/lost: its large object is missing" in lines
    assert (
        "upload short of alice/default/short: its large object holds 10 bytes where the row "
        "says 50 were received"
    ) in lines
    assert any(
        line.startswith("upload old of alice/default/old: abandoned: it expired at ")
        and line.endswith("and no node removed it")
        for line in lines
    ), found.stdout
    assert "fine" not in found.stdout and "orphan" not in found.stdout
    # A PATCH of "old" is under way: repair leaves it, and says so.
    patch = psycopg2.connect(dsn)
    try:
        with patch.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(pgblobs.upload_lock_key('old'))")
        repaired = pgblobs_cli("fsck", "--repair", "--dsn", dsn)
        assert repaired.returncode == 1
        assert "removed 2 upload(s)" in repaired.stdout, repaired.stdout
        assert "skipped upload old: a PATCH holds it now" in repaired.stdout
        assert uploads(dsn) == ["fine", "old"]
    finally:
        patch.close()  # its session lock goes with it
    assert "removed 1 upload(s)" in pgblobs_cli("fsck", "--repair", "--dsn", dsn).stdout
    assert pgblobs_cli("fsck", "--dsn", dsn).stdout.strip() == "clean"
    assert uploads(dsn) == ["fine"]
    assert sql(dsn, "SELECT lo_get(%(oid)s)", {"oid": fine})[0][0].tobytes() == b"ten bytes!"
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 1
