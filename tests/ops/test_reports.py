"""Reporting views and `pgblobs report`, against figures from the backend API."""

import csv
import io
import json
import urllib.request

from pgblobs.ops.capacity import OID_SPACE, Capacity
from pgblobs.settings import QUOTA_BYTES
from tests.helpers import content, create_upload, deferred_test, pgblobs_cli, sql, write


@deferred_test
async def test_views_agree_with_the_backend(backend, dsn):
    await write(backend, "alice", "a", content(5000))
    await write(backend, "alice", "b", content(300_000), namespace="mail")
    await write(backend, "alice", "c", content(10))
    await backend.delete_blob("alice", "c")
    await write(backend, "bob", "a", content(1))
    sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('bob', 4096)")
    rows = sql(
        dsn,
        """SELECT user_id, live_blobs, live_bytes, live_kib, tombstones,
                              quota_override_bytes, has_quota_override
                       FROM pgblobs.usage_by_user ORDER BY user_id""",
    )
    assert rows == [
        ("alice", 2, 305_000, await backend.get_total_storage("alice"), 1, None, False),
        ("bob", 1, 1, await backend.get_total_storage("bob"), 0, 4096, True),
    ]
    by_namespace = sql(
        dsn,
        """SELECT namespace, live_blobs, live_bytes, tombstones
                               FROM pgblobs.usage_by_namespace WHERE user_id = 'alice'
                               ORDER BY namespace""",
    )
    assert by_namespace == [
        ("default", await backend.count("alice"), 5000, 1),
        ("mail", await backend.count("alice", "mail"), 300_000, 0),
    ]
    daily = sql(
        dsn,
        "SELECT blobs_written, bytes_written, blobs_deleted, bytes_deleted "
        "FROM pgblobs.daily_activity",
    )
    assert daily == [(4, 305_011, 1, 10)]


@deferred_test
async def test_report_usage_formats(backend, dsn):
    await write(backend, "alice", "a", content(3 * 1024 * 1024 // 2))
    await write(backend, "bob", "a", content(100))
    table = pgblobs_cli("report", "usage", "--dsn", dsn)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["user", "blobs", "bytes"]
    assert lines[2].startswith("alice") and "1.5 MiB" in lines[2] and "0.8%" in lines[2]
    as_csv = list(
        csv.DictReader(
            io.StringIO(pgblobs_cli("report", "usage", "--format", "csv", "--dsn", dsn).stdout)
        )
    )
    assert [(r["user"], r["bytes"]) for r in as_csv] == [("alice", "1572864"), ("bob", "100")]
    as_json = json.loads(
        pgblobs_cli("report", "usage", "--format", "json", "--top", "1", "--dsn", dsn).stdout
    )
    assert [r["user"] for r in as_json] == ["alice"]
    only_bob = json.loads(
        pgblobs_cli("report", "usage", "--format", "json", "--user", "bob", "--dsn", dsn).stdout
    )
    assert only_bob[0]["kib"] == await backend.get_total_storage("bob")
    daily = json.loads(
        pgblobs_cli("report", "daily", "--days", "7", "--format", "json", "--dsn", dsn).stdout
    )
    assert daily[0]["blobs_written"] == 2


def report(dsn, *args):
    done = pgblobs_cli("report", *args, "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    return done.stdout


@deferred_test
async def test_report_shows_the_uploads_in_progress(backend, dsn):
    await write(backend, "alice", "a", content(1000))
    await write(backend, "bob", "a", content(10))
    create_upload(dsn, "alice-1", 500, b"ten bytes!", user="alice")
    create_upload(dsn, "alice-2", 300, user="alice")
    sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('carol', 4096)")
    create_upload(dsn, "carol-1", 2048, content(1024), user="carol")
    uploading = {"uploads", "received_bytes", "reserved_bytes", "quota_bytes", "blobs"}
    usage = {
        row["user"]: {k: v for k, v in row.items() if k in uploading}
        for row in json.loads(report(dsn, "usage", "--format", "json"))
    }
    assert usage == {
        "alice": dict(
            blobs=1, quota_bytes=QUOTA_BYTES, uploads=2, received_bytes=10, reserved_bytes=800
        ),
        "bob": dict(
            blobs=1, quota_bytes=QUOTA_BYTES, uploads=0, received_bytes=0, reserved_bytes=0
        ),
        # A user with nothing but an upload in progress is in the report too.
        "carol": dict(
            blobs=0, quota_bytes=4096, uploads=1, received_bytes=1024, reserved_bytes=2048
        ),
    }
    [carol] = csv.DictReader(
        io.StringIO(report(dsn, "usage", "--user", "carol", "--format", "csv"))
    )
    assert (carol["uploads"], carol["received_bytes"], carol["reserved_bytes"]) == (
        "1",
        "1024",
        "2048",
    )
    lines = report(dsn, "usage").splitlines()
    assert lines[0].split()[-3:] == ["uploads", "received_bytes", "reserved_bytes"]
    [carol_line] = [line for line in lines if line.startswith("carol")]
    assert carol_line.split()[-5:] == ["1", "1.0", "KiB", "2.0", "KiB"]
    overall = {"uploads": 3, "users": 2, "received_bytes": 1034, "reserved_bytes": 2848}
    assert json.loads(report(dsn, "uploads", "--format", "json")) == [overall]
    [as_csv] = csv.DictReader(io.StringIO(report(dsn, "uploads", "--format", "csv")))
    assert as_csv == {key: str(value) for key, value in overall.items()}
    table = report(dsn, "uploads").splitlines()
    assert table[0].split() == ["uploads", "users", "received_bytes", "reserved_bytes"]
    assert table[2].split() == ["3", "2", "1.0", "KiB", "2.8", "KiB"]


def test_reporting_role_may_read_the_views_and_nothing_else(dsn):
    sql(dsn, "DROP ROLE IF EXISTS report_reader")
    sql(dsn, "CREATE ROLE report_reader LOGIN IN ROLE pgblobs_reporting")
    try:
        reader = dsn.replace("user=postgres", "user=report_reader")
        assert sql(reader, "SELECT count(*) FROM pgblobs.usage_by_user") == [(0,)]
        import psycopg2
        import pytest

        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            sql(reader, "SELECT count(*) FROM pgblobs.blobs")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            sql(reader, "SELECT count(*) FROM pgblobs.tokens")
    finally:
        sql(dsn, "DROP ROLE report_reader")


@deferred_test
async def test_large_objects_are_counted_with_the_oids_left(backend, dsn):
    for i in range(3):
        await write(backend, "alice", f"lo{i}", content(1000 + i))
    done = pgblobs_cli("report", "large-objects", "--format", "json", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["large_objects"] == 3
    assert row["oids_left"] == OID_SPACE - 3
    assert row["disk_bytes"] > 3000
    table = pgblobs_cli("report", "large-objects", "--dsn", dsn)
    assert "oids_left" in table.stdout and "%" in table.stdout
    check = pgblobs_cli("fsck", "--dsn", dsn)
    assert check.returncode == 0 and "warning" not in check.stdout


def test_the_oid_space_warning_starts_at_a_quarter():
    assert Capacity(int(OID_SPACE * 0.2), 0).warning is None
    crowded = Capacity(int(OID_SPACE * 0.3), 0).warning
    assert "30% of the cluster's OID space" in crowded and "docs/scaling.md" in crowded


def test_metrics_show_the_large_objects(migrated_dsn, dsn):
    from tests.processes import ServeProcess

    node = ServeProcess("--dsn", migrated_dsn)
    try:
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as response:
            page = response.read().decode()
    finally:
        node.stop()
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in page.splitlines()
        if line.startswith("pgblobs_large_object")
    }
    assert gauges["pgblobs_large_object_oids_left"] == OID_SPACE - gauges["pgblobs_large_objects"]
    assert gauges["pgblobs_large_object_disk_bytes"] > 0
