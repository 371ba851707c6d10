"""The alembic schema: up, down, offline, and indexes that serve every per-user query."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest_twisted

from pgblobs import PostgresBlobsBackend
from pgblobs.db import schema
from pgblobs.db.queries import SQL
from tests.helpers import pgblobs_cli, sql, write

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC = [sys.executable, "-m", "alembic"]


def alembic(*args, env=None):
    result = subprocess.run(
        ALEMBIC + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def tables(dsn):
    return {
        name
        for (name,) in sql(
            dsn,
            """
        SELECT table_name FROM information_schema.tables WHERE table_schema = 'pgblobs'""",
        )
    }


def test_upgrade_and_downgrade_from_the_repository_root(scratch_dsn):
    alembic("-x", f"dsn={scratch_dsn}", "upgrade", "head")
    assert {"blobs", "blob_flags", "quotas", "usage", "alembic_version"} <= tables(scratch_dsn)
    assert sql(scratch_dsn, "SELECT version_num FROM pgblobs.alembic_version") == [
        (schema.head_revision(),)
    ]
    alembic("downgrade", "base", env={"PGBLOBS_DSN": scratch_dsn})
    assert tables(scratch_dsn) == {"alembic_version"}
    alembic("upgrade", "head", env={"PGBLOBS_DSN": scratch_dsn})
    assert "blobs" in tables(scratch_dsn)


def test_offline_upgrade_prints_the_sql():
    output = alembic("upgrade", "head", "--sql", env={"PGBLOBS_DSN": ""})
    assert "CREATE SCHEMA IF NOT EXISTS pgblobs" in output
    assert "CREATE TABLE pgblobs.blobs" in output
    assert "CREATE UNIQUE INDEX blobs_live_key" in output


@pytest_twisted.ensureDeferred
async def test_downgrade_unlinks_our_large_objects_and_only_ours(scratch_dsn):
    schema.upgrade(scratch_dsn)
    backend = await PostgresBlobsBackend.connect(scratch_dsn)
    try:
        await write(backend, "alice", "small", b"tiny")
        await write(backend, "alice", "large", b"L" * 2_000_000)
        await write(backend, "alice", "gone", b"deleted")
        await backend.delete_blob("alice", "gone")
    finally:
        await backend.close()
    foreign = sql(scratch_dsn, "SELECT lo_from_bytea(0, 'not pgblobs''')")[0][0]
    assert sql(scratch_dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 3
    schema.downgrade(scratch_dsn, "base")
    assert sql(scratch_dsn, "SELECT oid FROM pg_largeobject_metadata") == [(foreign,)]


def test_cli_upgrades_a_database(scratch_dsn):
    done = pgblobs_cli("db", "upgrade", "--dsn", scratch_dsn)
    assert done.returncode == 0, done.stderr
    assert "blobs" in tables(scratch_dsn)
    again = pgblobs_cli("db", "upgrade", env={"PGBLOBS_DSN": scratch_dsn})
    assert again.returncode == 0, again.stderr


def test_cli_says_what_is_wrong_without_a_database():
    missing = pgblobs_cli("db", "upgrade", unset=["PGBLOBS_DSN"])
    assert missing.returncode != 0
    assert "PGBLOBS_DSN" in missing.stderr and "Traceback" not in missing.stderr
    unreachable = pgblobs_cli(
        "db", "upgrade", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2", unset=["PGBLOBS_DSN"]
    )
    assert unreachable.returncode != 0
    assert "database error" in unreachable.stderr and "Traceback" not in unreachable.stderr


SEED = """
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256,
                               created_at, deleted_at)
    SELECT 'user-' || (i %% 1000), CASE WHEN i %% 3 = 0 THEN 'mail' ELSE 'default' END,
           'blob-' || i,
           CASE WHEN i %% 10 = 0 THEN NULL ELSE i END,
           i %% 5000, 'tag', '\\x00', now() - make_interval(secs => i),
           CASE WHEN i %% 10 = 0 THEN now() END
    FROM generate_series(1, %(rows)s) AS i;
    INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at, flag)
    SELECT id, user_id, namespace, blob_id, created_at, 'PENDING' FROM pgblobs.blobs
    WHERE id %% 7 = 0 AND deleted_at IS NULL;
"""

PER_USER_QUERIES = [
    "count_live",
    "list_live",
    "list_tombstones",
    "list_flagged",
    "total_storage_kib",
    "blob_info",
    "open_blob_batch",
    "open_blobs",
    "write_precheck",
    "changes",
    "write_many_precheck",
    "live_digests",
    "live_head",
    "account_contents",
    "delete_account_batch",
]


def test_per_user_queries_are_index_scans_on_a_large_table(scratch_dsn):
    schema.upgrade(scratch_dsn)
    sql(scratch_dsn, SEED, {"rows": 300_000})
    sql(scratch_dsn, "VACUUM ANALYZE pgblobs.blobs")
    sql(scratch_dsn, "VACUUM ANALYZE pgblobs.blob_flags")
    sql(scratch_dsn, "VACUUM ANALYZE pgblobs.usage")
    # A database in use has large objects: with none, any plan reads their catalog whole.
    sql(scratch_dsn, "SELECT lo_from_bytea(0, 'x') FROM generate_series(1, 10000)")
    sql(scratch_dsn, "VACUUM ANALYZE pg_largeobject_metadata")
    params = {
        "user": "user-42",
        "namespace": "default",
        "blob_id": "blob-1042",
        "flag": "PENDING",
        "flags": ["PENDING"],
        "default_quota": 1000,
        "default_quota_blobs": 1000,
        "start": 0,
        "end": None,
        "inline_limit": 0,
        "blob_ids": ["blob-1042", "blob-2042"],
        "users": ["user-42", "user-42"],
        "namespaces": ["default", "default"],
        "batch": 500,
        "since": 0,
        "limit": 1000,
        "length": 737,
    }
    for name in PER_USER_QUERIES:
        plan = "\n".join(row[0] for row in sql(scratch_dsn, "EXPLAIN " + SQL[name], params))
        assert "Seq Scan" not in plan, f"{name}:\n{plan}"
        assert "Index" in plan, f"{name}:\n{plan}"


# delete_blob and set_flags call functions, whose statements EXPLAIN does not show: the
# write path's test below runs them and counts what they read.
SINGLE_BLOB_QUERIES = ["open_blob_batch", "blob_info", "write_precheck"]


def test_single_blob_statements_use_the_live_key_before_any_statistics(scratch_dsn):
    """100,000 live blobs of one user, no ANALYZE: a single-blob statement
    must still find its row through the unique live key, not by scanning the
    user's blobs (revision 0007)."""
    schema.upgrade(scratch_dsn)
    oid = sql(scratch_dsn, "SELECT lo_from_bytea(0, 'x')")[0][0]
    sql(
        scratch_dsn,
        "INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256) "
        "SELECT 'heavy', 'default', 'b' || i, %(oid)s, 1, 't', '\\x00' "
        "FROM generate_series(1, 100000) AS i",
        {"oid": oid},
    )
    params = {
        "user": "heavy",
        "namespace": "default",
        "blob_id": "b50000",
        "inline_limit": 262144,
        "default_quota": None,
        "default_quota_blobs": None,
        "flags": [],
        "users": ["heavy"],
        "namespaces": ["default"],
        "blob_ids": ["b50000"],
    }
    for name in SINGLE_BLOB_QUERIES:
        plan = "\n".join(row[0] for row in sql(scratch_dsn, "EXPLAIN " + SQL[name], params))
        assert "blobs_live_key" in plan, f"{name}:\n{plan}"
        assert "blobs_live_by_date" not in plan, f"{name}:\n{plan}"
    sql(scratch_dsn, "SELECT lo_unlink(%(oid)s)", {"oid": oid})


def _write_path_params(user, blob_ids, contents):
    """Parameters of the write statements for ``blob_ids`` of ``user``."""
    return {
        "users": [user] * len(blob_ids),
        "namespaces": ["default"] * len(blob_ids),
        "blob_ids": blob_ids,
        "contents": [psycopg2.Binary(data) for data in contents],
        "tags": ["tag"] * len(blob_ids),
        "sha256s": [psycopg2.Binary(b"\x00")] * len(blob_ids),
        "flags": [""] * len(blob_ids),
        "default_quota": None,
        "default_quota_blobs": None,
    }


def test_write_statements_use_their_indexes_without_statistics(scratch_dsn):
    """A new database: the write path's statements run (and plpgsql caches its
    plans) while the table is empty, then 100,000 rows arrive and nothing
    analyses them. No write statement may scan the table (issue 17, item 17:
    PUT throughput fell from 2,700/s to 730/s until autovacuum analysed it)."""
    schema.upgrade(scratch_dsn)
    for table in ("blobs", "blob_flags", "usage"):
        sql(scratch_dsn, f"ALTER TABLE pgblobs.{table} SET (autovacuum_enabled = off)")
    node = psycopg2.connect(scratch_dsn)  # one session: the one whose plans are cached
    node.autocommit = True
    with node.cursor() as cursor:
        for i in range(12):
            ids = [f"early{i}a", f"early{i}b"]
            cursor.execute(SQL["put_small_blobs"], _write_path_params("heavy", ids, [b"x", b"y"]))
    oid = sql(scratch_dsn, "SELECT lo_from_bytea(0, 'x')")[0][0]
    sql(
        scratch_dsn,
        "INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256, "
        "deleted_at) SELECT 'heavy', 'default', 'b' || i, "
        "CASE WHEN i %% 2 = 0 THEN %(oid)s END, 1, 't', '\\x00', "
        "CASE WHEN i %% 2 = 1 THEN now() END FROM generate_series(1, 100000) AS i",
        {"oid": oid},
    )
    assert (
        sql(scratch_dsn, "SELECT reltuples FROM pg_class WHERE oid = 'pgblobs.blobs'::regclass")[0][
            0
        ]
        <= 0
    )  # never analysed
    node.autocommit = False
    with node.cursor() as cursor:
        # New names, tombstones revived (odd ids), and one name a live blob has (b2).
        ids = [f"new{i}" for i in range(20)] + ["b1", "b3", "b5", "b7", "b2"]
        cursor.execute(SQL["put_small_blobs"], _write_path_params("heavy", ids, [b"z"] * 25))
        assert cursor.fetchone()[0] == ["stored"] * 24 + ["exists"]
        cursor.execute("SELECT lo_from_bytea(0, 'streamed')")
        streamed = cursor.fetchone()[0]
        cursor.execute(
            SQL["put_blobs"],
            {
                "user": "heavy",
                "namespace": "default",
                "blob_ids": ["b9"],
                "oids": [streamed],
                "sizes": [8],
                "tags": ["tag"],
                "sha256s": [psycopg2.Binary(b"\x00")],
                "flags": [""],
                "default_quota": 10**12,
                "default_quota_blobs": 10**9,
            },
        )
        one = {"user": "heavy", "namespace": "default", "blob_id": "b4"}
        cursor.execute(SQL["write_precheck"], dict(one, default_quota=1, default_quota_blobs=1))
        cursor.execute(SQL["set_flags"], dict(one, flags=["PENDING"]))
        cursor.execute(SQL["delete_blob"], one)
        # What the statements read of pgblobs.blobs, in this transaction: by
        # scanning it, and through each of its indexes.
        cursor.execute(
            "SELECT seq_scan, seq_tup_read FROM pg_stat_xact_user_tables "
            "WHERE relid = 'pgblobs.blobs'::regclass"
        )
        assert cursor.fetchone() == (0, 0)
        cursor.execute(
            "SELECT indexrelid::regclass::text, pg_stat_get_xact_tuples_returned(indexrelid) "
            "FROM pg_index WHERE indrelid = 'pgblobs.blobs'::regclass"
        )
        read_through = dict(cursor.fetchall())
        # A few entries per name written, not the user's 100,000.
        assert sum(read_through.values()) < 1000, read_through
        node.rollback()
    node.close()


def revision_of(dsn):
    return sql(dsn, "SELECT version_num FROM pgblobs.alembic_version")[0][0]


def refused(dsn, *message_parts, revision="head"):
    """`pgblobs db upgrade` of ``dsn`` fails with one readable message that has
    each of ``message_parts``; that message."""
    done = pgblobs_cli("db", "upgrade", "--dsn", dsn, "--revision", revision)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    for part in message_parts:
        assert part in done.stderr, done.stderr
    return done.stderr


def session(dsn, application_name=None):
    connection = psycopg2.connect(dsn, application_name=application_name or "")
    connection.autocommit = True
    return connection


def test_upgrade_refuses_a_revision_this_code_does_not_know(scratch_dsn):
    schema.upgrade(scratch_dsn)
    sql(scratch_dsn, "UPDATE pgblobs.alembic_version SET version_num = '0999'")
    refused(scratch_dsn, "revision 0999", "does not know", "a newer pgblobs upgraded it")
    assert revision_of(scratch_dsn) == "0999"


def test_upgrade_to_a_revision_that_does_not_exist_says_so(scratch_dsn):
    refused(scratch_dsn, "no such revision: nope", revision="nope")
    assert "blobs" not in tables(scratch_dsn)


def test_upgrade_refuses_while_another_upgrade_runs(scratch_dsn):
    other = session(scratch_dsn, "pgblobs db upgrade")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtextextended('pgblobs.db upgrade', 0))")
        refused(
            scratch_dsn, "another `pgblobs db upgrade` is running", f"pid {other.get_backend_pid()}"
        )
        assert "blobs" not in tables(scratch_dsn)
    finally:
        other.close()
    assert pgblobs_cli("db", "upgrade", "--dsn", scratch_dsn).returncode == 0


def test_upgrade_gives_up_on_a_lock_that_long_transactions_hold(scratch_dsn):
    """Revision 0005 alters blob_flags; a reader's open transaction holds it:
    the migration fails after lock_timeout instead of queueing every node's
    statements behind its own wait, and is rolled back."""
    schema.upgrade(scratch_dsn, "0004")
    reader = psycopg2.connect(scratch_dsn)
    try:
        with reader.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pgblobs.blob_flags")  # the transaction stays open
        started = time.monotonic()
        refused(
            scratch_dsn,
            f"could not take a lock within {schema.LOCK_TIMEOUT_SECONDS} s",
            "long transactions",
            f"pid {reader.get_backend_pid()}",
            "stays at 0004",
            revision="0005",
        )
        assert time.monotonic() - started < schema.LOCK_TIMEOUT_SECONDS + 30
        assert revision_of(scratch_dsn) == "0004"
    finally:
        reader.close()
    assert pgblobs_cli("db", "upgrade", "--dsn", scratch_dsn, "--revision", "0005").returncode == 0
    assert revision_of(scratch_dsn) == "0005"


def test_upgrade_refuses_to_drop_functions_that_connected_nodes_call(scratch_dsn):
    """0011 drops what code before 0009 calls (its code_floor): a node that
    says it runs 0008 is named, and so is any session while the database
    itself is at 0008 (older nodes do not say their revision)."""
    schema.upgrade(scratch_dsn, "0010")
    old_node = session(scratch_dsn, "pgblobs 0008")
    try:
        refused(
            scratch_dsn,
            "revision 0011",
            "before revision 0009",
            "'pgblobs 0008'",
            "`pgblobs db upgrade --revision 0010`",
        )
        assert revision_of(scratch_dsn) == "0010"
    finally:
        old_node.close()
    current_node = session(scratch_dsn, "pgblobs 0010")
    unnamed = session(scratch_dsn)
    try:
        assert pgblobs_cli("db", "upgrade", "--dsn", scratch_dsn).returncode == 0
    finally:
        current_node.close()
        unnamed.close()
    assert revision_of(scratch_dsn) == schema.head_revision()


def test_upgrade_from_below_the_floor_counts_every_session_as_an_old_node(scratch_dsn):
    schema.upgrade(scratch_dsn, "0008")
    unnamed = session(scratch_dsn, "psql")
    try:
        refused(scratch_dsn, "'psql'", f"pid {unnamed.get_backend_pid()}")
        assert revision_of(scratch_dsn) == "0008"
    finally:
        unnamed.close()
    assert schema.upgrade(scratch_dsn) == schema.head_revision()


@pytest_twisted.ensureDeferred
async def test_nodes_name_their_revision(dsn):
    backend = await PostgresBlobsBackend.connect(dsn)
    try:
        names = sql(
            dsn,
            "SELECT DISTINCT application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name LIKE 'pgblobs %%'",
        )
    finally:
        await backend.close()
    assert names == [(f"pgblobs {schema.head_revision()}",)]
