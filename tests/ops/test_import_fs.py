"""`pgblobs import-fs` on a generated Soledad filesystem store."""

import json
import os
import random
from pathlib import Path

from pgblobs import Flags
from tests.helpers import deferred_test, pgblobs_cli, read, sql


def blob_path(root, user, namespace, blob_id):
    return Path(root, user, namespace, blob_id[0], blob_id[:3], blob_id[:6], blob_id)


def make_store(root, seed=7):
    """A few hundred blobs over users and namespaces, with flags and tombstones.
    Returns what pgblobs should hold afterwards."""
    rng = random.Random(seed)
    expected = {}
    when = 1_700_000_000
    for user in ("alice", "bob", "carol"):
        for namespace in ("default", "mail", "sync"):
            for n in range(35):
                blob_id = f"{rng.getrandbits(64):016x}{n}"
                path = blob_path(root, user, namespace, blob_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                data = rng.randbytes(rng.choice([0, 5, 16, 3000, 70_000, 400_000]))
                when += 60
                record = {"data": data, "flags": [], "deleted": False, "when": when}
                if n % 7 == 3:
                    marker = path.with_name(blob_id + ".deleted")
                    marker.touch()
                    os.utime(marker, (when, when))
                    record["deleted"] = True
                else:
                    path.write_bytes(data)
                    os.utime(path, (when, when))
                    if n % 5 == 1:
                        record["flags"] = sorted(rng.sample(Flags.ALL, 2))
                        path.with_name(blob_id + ".flags").write_text(json.dumps(record["flags"]))
                expected[(user, namespace, blob_id)] = record
    return expected


@deferred_test
async def test_import_reproduces_the_tree_and_a_second_run_imports_nothing(backend, dsn, tmp_path):
    expected = make_store(tmp_path)
    bad = tmp_path / "alice" / "default" / "b" / "bad" / "bad na"
    bad.mkdir(parents=True)
    (bad / "bad name!").write_bytes(b"x")
    misplaced = tmp_path / "bob" / "mail" / "z" / "zzz" / "zzzzzz"
    misplaced.mkdir(parents=True)
    (misplaced / "abcdef123").write_bytes(b"x")

    dry = pgblobs_cli("import-fs", str(tmp_path), "--dry-run", "--dsn", dsn)
    assert "would import" in dry.stdout
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs") == [(0,)]

    first = pgblobs_cli("import-fs", str(tmp_path), "--dsn", dsn)
    live = [k for k, r in expected.items() if not r["deleted"]]
    dead = [k for k, r in expected.items() if r["deleted"]]
    assert f"imported {len(live)} blob(s)" in first.stdout
    assert f"{len(dead)} tombstone(s)" in first.stdout
    assert "failed 2" in first.stdout
    assert "bad name!" in first.stderr and "abcdef123" in first.stderr
    assert first.returncode == 1

    for user in ("alice", "bob", "carol"):
        for namespace in ("default", "mail", "sync"):
            mine = sorted(
                ((r["when"], k[2], r) for k, r in expected.items() if k[:2] == (user, namespace))
            )
            assert await backend.list_blobs(user, namespace, order_by="date") == [
                blob_id for _, blob_id, r in mine if not r["deleted"]
            ]
            assert await backend.list_blobs(user, namespace, deleted=True, order_by="date") == [
                blob_id for _, blob_id, r in mine if r["deleted"]
            ]
            for _, blob_id, record in mine:
                if not record["deleted"]:
                    assert await read(backend, user, blob_id, namespace) == record["data"]
                    assert await backend.get_flags(user, blob_id, namespace) == record["flags"]

    second = pgblobs_cli("import-fs", str(tmp_path), "--dsn", dsn)
    assert "imported 0 blob(s)" in second.stdout and "0 tombstone(s)" in second.stdout
    assert f"unchanged {len(expected)}; kept 0" in second.stdout


@deferred_test
async def test_import_one_user_only(backend, dsn, tmp_path):
    make_store(tmp_path)
    done = pgblobs_cli("import-fs", str(tmp_path), "--user", "bob", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert {u for (u,) in sql(dsn, "SELECT DISTINCT user_id FROM pgblobs.blobs")} == {"bob"}


def test_a_failing_blob_fails_alone_and_its_batch_leaves_nothing_behind(dsn, tmp_path):
    expected = make_store(tmp_path)
    culprit = next(k for k, r in expected.items() if not r["deleted"] and not r["flags"])
    blob_path(tmp_path, *culprit).with_name(culprit[2] + ".flags").write_text("not json")
    done = pgblobs_cli("import-fs", str(tmp_path), "--dsn", dsn)
    assert done.returncode == 1
    assert "failed 1" in done.stdout and culprit[2] in done.stderr
    live = sum(not r["deleted"] for r in expected.values())
    assert f"imported {live - 1} blob(s)" in done.stdout
    # Every large object belongs to a live row, and the counters add up.
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata") == [(live - 1,)]
    assert sql(dsn, "SELECT sum(live_blobs) FROM pgblobs.usage") == [(live - 1,)]
    check = pgblobs_cli("fsck", "--dsn", dsn)
    assert check.returncode == 0, check.stdout + check.stderr
