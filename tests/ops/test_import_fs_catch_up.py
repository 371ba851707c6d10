"""`pgblobs import-fs` run again brings pgblobs level with a Soledad store that
kept changing: new blobs imported, deletes become tombstones, flags updated,
and nothing the store does not contradict touched."""

import os
import random
import re
import subprocess
import threading
import time
import uuid

from pgblobs import Flags
from pgblobs.db.queries import SQL
from pgblobs.db.sync import SyncConnection
from pgblobs.ops import importfs
from tests.helpers import (
    content,
    deferred_test,
    pgblobs_cli,
    pgblobs_command,
    read,
    sql,
    wait_until,
    write,
)
from tests.ops.soledad_store import SoledadStore, in_pgblobs, on_disk
from tests.ops.test_import_fs_files import DEADLINE

LARGE = 300_000  # over versions.INLINE_LIMIT: streamed into a large object
SUMMARY = re.compile(
    r"imported (?P<imported>\d+) blob\(s\) \([^,]+, (?P<replaced>\d+) replacing an older copy\)"
    r" and (?P<tombstones>\d+) tombstone\(s\); tombstoned (?P<tombstoned>\d+);"
    r" flags updated (?P<flags_updated>\d+); unchanged (?P<unchanged>\d+);"
    r" kept (?P<kept>\d+); failed (?P<failed>\d+); in (?P<seconds>[0-9.]+) s"
)


def import_fs(root, dsn):
    """One run of import-fs: its counts (from its last line), its output, and
    the seconds it said the import took (the command's start-up aside)."""
    done = pgblobs_cli("import-fs", str(root), "--dsn", dsn)
    return counted(done.stdout + done.stderr), done, seconds(done.stdout)


def counted(output):
    found = SUMMARY.search(output)
    assert found, output
    return {k: int(v) for k, v in found.groupdict().items() if k != "seconds"}


def seconds(output):
    return float(SUMMARY.search(output).group("seconds"))


def clean(counts, **expected):
    """``counts`` with every count not named in ``expected`` zero."""
    return counts == dict(dict.fromkeys(counts, 0), **expected)


def usage(dsn, user):
    return sql(dsn, "SELECT live_blobs, live_bytes FROM pgblobs.usage WHERE user_id = %s", (user,))


def fsck_is_clean(dsn):
    check = pgblobs_cli("fsck", "--dsn", dsn)
    assert check.returncode == 0, check.stdout + check.stderr
    return True


def test_a_blob_deleted_in_the_source_after_its_import_becomes_a_tombstone(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    store.write("alice", "small", b"small body")
    store.write("alice", "large", content(LARGE))
    store.set_flags("alice", "large", ["PENDING"])
    store.write("alice", "stays", b"kept")
    counts, _, _ = import_fs(tmp_path, dsn)
    assert clean(counts, imported=3)
    assert usage(dsn, "alice") == [(3, 10 + LARGE + 4)]

    store.delete("alice", "small")
    store.delete("alice", "large")
    imported = in_pgblobs(dsn)
    dry = pgblobs_cli("import-fs", str(tmp_path), "--dry-run", "--dsn", dsn)
    assert "tombstoned 2;" in dry.stdout and "would import 0 blob(s)" in dry.stdout
    assert in_pgblobs(dsn) == imported
    counts, done, _ = import_fs(tmp_path, dsn)
    assert done.returncode == 0, done.stderr
    assert clean(counts, tombstoned=2, unchanged=1)
    assert usage(dsn, "alice") == [(1, 4)]
    assert in_pgblobs(dsn) == on_disk(tmp_path)
    assert on_disk(tmp_path)[1] == {("alice", "default", "small"), ("alice", "default", "large")}
    # The content went as a delete through the API takes it: no large object
    # but the live blob's, no flag left (the dsn fixture checks for orphans).
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata") == [(1,)]
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blob_flags") == [(0,)]
    assert fsck_is_clean(dsn)


def test_flags_changed_in_the_source_are_updated(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    for blob_id in ("flagged", "cleared", "untouched"):
        store.write("alice", blob_id, b"body " + blob_id.encode())
        store.set_flags("alice", blob_id, ["PENDING"])
    import_fs(tmp_path, dsn)

    store.set_flags("alice", "flagged", ["PROCESSED", "PENDING"])
    store.set_flags("alice", "cleared", [])
    counts, _, _ = import_fs(tmp_path, dsn)
    assert clean(counts, flags_updated=2, unchanged=1)
    assert sql(
        dsn,
        "SELECT blob_id, flag FROM pgblobs.blob_flags ORDER BY blob_id, flag",
    ) == [("flagged", "PENDING"), ("flagged", "PROCESSED"), ("untouched", "PENDING")]
    assert in_pgblobs(dsn) == on_disk(tmp_path)


def test_a_blob_written_again_in_the_source_replaces_and_a_second_delete_is_seen(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    store.write("alice", "again", b"first version")
    an_hour_ago = time.time() - 3600
    os.utime(store.path("alice", "again"), (an_hour_ago, an_hour_ago))
    import_fs(tmp_path, dsn)

    # Deleted and written again: the marker stays beside the new blob file.
    store.delete("alice", "again")
    marker = store.path("alice", "again").with_name("again.deleted")
    half_an_hour_ago = an_hour_ago + 1800
    os.utime(marker, (half_an_hour_ago, half_an_hour_ago))
    store.write("alice", "again", content(LARGE))
    counts, _, _ = import_fs(tmp_path, dsn)
    assert clean(counts, imported=1, replaced=1)
    assert usage(dsn, "alice") == [(1, LARGE)]
    assert in_pgblobs(dsn) == on_disk(tmp_path)

    # Deleted again, the marker keeps its first date (Soledad touches it in
    # append mode), older than the row the last run imported.
    store.delete("alice", "again")
    assert marker.stat().st_mtime == half_an_hour_ago
    counts, _, _ = import_fs(tmp_path, dsn)
    assert clean(counts, tombstoned=1)
    assert usage(dsn, "alice") == [(0, 0)]
    assert in_pgblobs(dsn) == on_disk(tmp_path) == ({}, {("alice", "default", "again")})
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata") == [(0,)]


@deferred_test
async def test_what_pgblobs_holds_later_than_the_source_stays(backend, dsn, tmp_path):
    store = SoledadStore(tmp_path)
    store.write("alice", "deleted-then-written", b"old")
    store.delete("alice", "deleted-then-written")
    store.write("alice", "rewritten", b"source copy")
    store.write("alice", "deleted-in-pgblobs", b"source copy")
    store.write("alice", "flagged-in-pgblobs", b"source copy")
    an_hour_ago = time.time() - 3600
    for directory, _, files in os.walk(tmp_path):
        for name in files:
            os.utime(os.path.join(directory, name), (an_hour_ago, an_hour_ago))
        os.utime(directory, (an_hour_ago, an_hour_ago))
    counts, _, _ = import_fs(tmp_path, dsn)
    assert clean(counts, imported=3, tombstones=1)

    # Through the API, after the cutover: each of these is later than the store.
    await write(backend, "alice", "only-in-pgblobs", b"api")
    await write(backend, "alice", "deleted-then-written", b"api")
    await backend.delete_blob("alice", "rewritten")
    await write(backend, "alice", "rewritten", b"api copy")
    await backend.delete_blob("alice", "deleted-in-pgblobs")
    await backend.set_flags("alice", "flagged-in-pgblobs", ["PROCESSED"])
    before = in_pgblobs(dsn)

    counts, done, _ = import_fs(tmp_path, dsn)
    assert done.returncode == 0, done.stderr
    # The store has no flags file for "flagged-in-pgblobs": it says nothing of
    # its flags, so the ones set through the API stand.
    assert clean(counts, kept=3, unchanged=1)
    for name, why in (
        ("deleted-then-written.deleted", "written in pgblobs after the source deleted it"),
        ("rewritten", "pgblobs' copy is newer than the source's, and differs"),
        ("deleted-in-pgblobs", "deleted in pgblobs after the source wrote it"),
    ):
        path = store.path("alice", name.removesuffix(".deleted")).with_name(name)
        assert f"kept {path}: {why}" in done.stdout
    assert in_pgblobs(dsn) == before
    assert await read(backend, "alice", "only-in-pgblobs") == b"api"
    assert await read(backend, "alice", "rewritten") == b"api copy"
    assert await backend.get_flags("alice", "flagged-in-pgblobs") == ["PROCESSED"]


def snapshot(dsn):
    """Every row of blobs and blob_flags, as they are."""
    return (
        sql(dsn, "SELECT * FROM pgblobs.blobs ORDER BY id"),
        sql(dsn, "SELECT * FROM pgblobs.blob_flags ORDER BY blob_row, flag"),
        sql(dsn, "SELECT * FROM pgblobs.usage ORDER BY user_id, namespace"),
    )


def test_a_second_run_over_an_unchanged_source_changes_nothing(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    rng = random.Random(19)
    total = 0
    for n in range(2000):
        user = f"user{n % 10}"
        blob_id = uuid.UUID(int=rng.getrandbits(128)).hex
        data = rng.randbytes(rng.choice([100, 2_000, 10_000, 20_000]))
        store.write(user, blob_id, data)
        if n % 4 == 1:
            store.set_flags(user, blob_id, ["PENDING"])
        if n % 10 == 7:
            store.delete(user, blob_id)
        else:
            total += len(data)
    first, _, first_seconds = import_fs(tmp_path, dsn)
    assert clean(first, imported=1800, tombstones=200)
    before = snapshot(dsn)

    second, _, second_seconds = import_fs(tmp_path, dsn)
    assert clean(second, unchanged=2000)
    assert snapshot(dsn) == before
    print(
        f"\n2,000 blobs (1,800 live, {total / 2**20:.1f} MiB): first import "
        f"{first_seconds:.2f} s, second {second_seconds:.2f} s "
        f"({second_seconds / first_seconds:.0%} of the first; the command's start-up aside)"
    )


def test_a_store_that_kept_changing_during_the_import_is_caught_up_by_a_second_run(dsn, tmp_path):
    """The issue's test: a writer writes, deletes, flags and writes again in the
    Soledad layout while the first import runs; after it stops, a second import
    leaves pgblobs holding exactly the store's live blobs, tombstones and flags."""
    store = SoledadStore(tmp_path)
    rng = random.Random(4)
    users = [f"user{n}" for n in range(8)]
    live, deleted = [], []

    def write_one():
        user, blob_id = rng.choice(users), uuid.UUID(int=rng.getrandbits(128)).hex
        size = rng.choice([0, 50, 3_000, 3_000, 30_000, 30_000, 30_000, LARGE])
        store.write(user, blob_id, rng.randbytes(size))
        live.append((user, blob_id))

    def delete_one():
        key = live.pop(rng.randrange(len(live)))
        store.delete(*key)
        deleted.append(key)

    def flag_one():
        store.set_flags(*rng.choice(live), sorted(rng.sample(Flags.ALL, rng.randint(0, 2))))

    def write_again():
        key = deleted.pop(rng.randrange(len(deleted)))
        store.write(*key, rng.randbytes(rng.choice([10, 20_000])))
        live.append(key)

    for _ in range(1500):
        write_one()
    for _ in range(150):
        delete_one()
    for _ in range(300):
        flag_one()

    importer = subprocess.Popen(
        pgblobs_command("import-fs", str(tmp_path), "--dsn", dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    changes_during, rounds_after_a_commit = 0, 0

    def rows_committed():
        return sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0]

    def writer():
        # Rounds of changes, each once the import has committed another
        # batch, so that they fall on blobs it has imported and on blobs it
        # has yet to reach. Bounded: it stops when the import ends, or after
        # 3,000 changes.
        nonlocal changes_during, rounds_after_a_commit
        while importer.poll() is None and changes_during < 3_000:
            for _ in range(150):
                action = rng.choices(
                    [write_one, delete_one, flag_one, write_again], weights=[4, 3, 3, 1]
                )[0]
                if action is write_again and not deleted:
                    action = write_one
                action()
                changes_during += 1
            committed = rows_committed()
            rounds_after_a_commit += committed > 0
            wait_until(
                lambda seen=committed: importer.poll() is not None or rows_committed() > seen,
                "the import to commit another batch",
                timeout=DEADLINE,
            )

    writing = threading.Thread(target=writer)
    writing.start()
    first_out, first_err = importer.communicate(timeout=DEADLINE)
    writing.join()
    first = counted(first_out)
    assert rounds_after_a_commit >= 2, "the writer barely ran while the first import did"

    second, done, _ = import_fs(tmp_path, dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    assert second["failed"] == second["kept"] == 0
    # Changes the writer made to blobs the first run had imported.
    assert second["tombstoned"] > 0 and second["flags_updated"] > 0, done.stdout
    assert in_pgblobs(dsn) == on_disk(tmp_path)
    assert fsck_is_clean(dsn)

    third, _, third_seconds = import_fs(tmp_path, dsn)
    assert clean(third, unchanged=len(live) + len(deleted))
    failures = sorted({line.split(": ", 1)[-1] for line in first_err.splitlines()})
    print(
        f"\nfirst import, {changes_during} changes made meanwhile "
        f"({rounds_after_a_commit} rounds after one of its commits) "
        f"({first['failed']} failed: {'; '.join(failures[:5])}):\n"
        f"  {SUMMARY.search(first_out).group(0)}\n"
        f"catch-up: {SUMMARY.search(done.stdout).group(0)}\n"
        f"unchanged re-run: {third_seconds:.2f} s"
    )


def test_what_pgblobs_holds_is_looked_up_through_the_name_keys(dsn):
    """A re-run judges each name by two index probes, however many rows the
    table has, and before any statistics."""
    oid = sql(dsn, "SELECT lo_from_bytea(0, 'x')")[0][0]
    sql(
        dsn,
        "INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256,"
        " deleted_at)"
        " SELECT 'heavy', 'default', 'b' || i, CASE WHEN i %% 2 = 0 THEN %(oid)s END, 1, 't',"
        " '\\x00', CASE WHEN i %% 2 = 1 THEN now() END"
        " FROM generate_series(1, 100000) AS i",
        {"oid": oid},
    )
    names = {"users": ["heavy"] * 2, "namespaces": ["default"] * 2, "blob_ids": ["b2", "b3"]}
    plan = "\n".join(row[0] for row in sql(dsn, "EXPLAIN " + SQL["import_state"], names))
    assert "blobs_live_key" in plan and "blobs_tombstone_key" in plan, plan
    assert "Seq Scan on blobs" not in plan, plan
    held = sql(dsn, SQL["import_state"], names)
    assert [(position, deleted_at is None) for position, _, _, _, deleted_at, _ in held] == [
        (1, True),
        (2, False),
    ]


def test_a_batch_whose_later_entries_changed_commits_as_one(dsn, tmp_path):
    """Under the lock the rows of the changed entries are looked up again and
    compared with what they were judged on; an entry's place in the batch is
    no part of that, so the batch is not redone one blob at a time."""
    store = SoledadStore(tmp_path)
    for blob_id in ("a1", "b2", "c3"):
        store.write("alice", blob_id, b"body")
    import_fs(tmp_path, dsn)
    store.set_flags("alice", "c3", ["PENDING"])
    store.delete("alice", "b2")
    connection = SyncConnection.connect_at_head(dsn)
    try:
        report = importfs.ImportReport()
        importfs._import_batch(connection, list(importfs.scan(tmp_path, report)), report, False)
    finally:
        connection.close()
    assert (report.tombstoned, report.flags_updated, report.unchanged) == (1, 1, 1)
    assert in_pgblobs(dsn) == on_disk(tmp_path)
