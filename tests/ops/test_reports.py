"""Reporting views and `pgblobs report`, against figures from the backend API."""

import csv
import io
import json
import urllib.request

from pgblobs.ops.capacity import OID_SPACE, Capacity
from tests.helpers import content, deferred_test, pgblobs_cli, sql, write


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
