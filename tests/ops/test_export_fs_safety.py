"""`pgblobs export-fs` into a directory that holds an earlier export: links in it
are never followed, staleness is decided by content, each blob ends as exactly
one of its file or its marker, and every file is on disk before it counts."""

import json
import os
import re
import subprocess

from tests.helpers import deferred_test, pgblobs_cli, pgblobs_command, sql, write
from tests.ops.test_import_fs import blob_path


def export(root, dsn):
    done = pgblobs_cli("export-fs", str(root), "--dsn", dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def files_of(root, blob_id, user="alice", namespace="default"):
    """The names in a blob's directory that belong to ``blob_id``."""
    directory = blob_path(root, user, namespace, blob_id).parent
    return sorted(name for name in os.listdir(directory) if name.split(".")[0] == blob_id)


def date_ns(dsn, blob_id, column):
    ((stamp,),) = sql(
        dsn,
        f"SELECT (extract(epoch FROM {column}) * 1000000)::bigint FROM pgblobs.blobs "
        "WHERE blob_id = %s",
        (blob_id,),
    )
    return stamp * 1000


@deferred_test
async def test_a_blob_rewritten_with_the_same_size_is_exported_again(backend, dsn, tmp_path):
    await write(backend, "alice", "b1", b"first")
    export(tmp_path, dsn)
    path = blob_path(tmp_path, "alice", "default", "b1")
    assert path.read_bytes() == b"first"

    await backend.delete_blob("alice", "b1")
    await write(backend, "alice", "b1", b"again")
    assert "exported 1 blob(s)" in export(tmp_path, dsn)
    assert path.read_bytes() == b"again"
    assert os.stat(path).st_mtime_ns == date_ns(dsn, "b1", "created_at")
    assert "exported 0 blob(s)" in export(tmp_path, dsn)


@deferred_test
async def test_each_blob_is_exactly_one_of_its_file_or_its_marker(
    backend, dsn, scratch_dsn, tmp_path
):
    await write(backend, "alice", "b1", b"first")
    await backend.set_flags("alice", "b1", ["PENDING"])
    export(tmp_path, dsn)
    assert files_of(tmp_path, "b1") == ["b1", "b1.flags"]

    await backend.delete_blob("alice", "b1")
    export(tmp_path, dsn)
    assert files_of(tmp_path, "b1") == ["b1.deleted"]
    marker = blob_path(tmp_path, "alice", "default", "b1").with_name("b1.deleted")
    assert os.stat(marker).st_mtime_ns == date_ns(dsn, "b1", "deleted_at")

    await write(backend, "alice", "b1", b"second")
    export(tmp_path, dsn)
    assert files_of(tmp_path, "b1") == ["b1"]

    # Flags changed on a blob whose content did not: the flags file follows.
    await backend.set_flags("alice", "b1", ["PROCESSED"])
    export(tmp_path, dsn)
    flags = blob_path(tmp_path, "alice", "default", "b1").with_name("b1.flags")
    assert json.loads(flags.read_text()) == ["PROCESSED"]
    await backend.set_flags("alice", "b1", [])
    export(tmp_path, dsn)
    assert files_of(tmp_path, "b1") == ["b1"]

    # Imported again, the blob is live, with the content it has now.
    assert pgblobs_cli("db", "upgrade", "--dsn", scratch_dsn).returncode == 0
    assert pgblobs_cli("import-fs", str(tmp_path), "--dsn", scratch_dsn).returncode == 0
    assert sql(scratch_dsn, "SELECT blob_id, deleted_at IS NULL, size FROM pgblobs.blobs") == [
        ("b1", True, 6)
    ]


def planted_link(path, target, text="keep"):
    """A symbolic link at ``path`` to a file ``target`` holding ``text``."""
    target.write_text(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


@deferred_test
async def test_links_in_the_directory_are_replaced_never_written_through(backend, dsn, tmp_path):
    await write(backend, "alice", "victim", b"the blob")
    await backend.set_flags("alice", "victim", ["PENDING"])
    await write(backend, "alice", "gone", b"x")
    await backend.delete_blob("alice", "gone")
    root, outside = tmp_path / "export", tmp_path / "outside"
    outside.mkdir()
    victim = blob_path(root, "alice", "default", "victim")
    planted = {
        victim: outside / "content",
        victim.with_name("victim.part"): outside / "partial",
        victim.with_name("victim.flags"): outside / "flags",
        blob_path(root, "alice", "default", "gone").with_name("gone.deleted"): outside / "marker",
    }
    for link, target in planted.items():
        planted_link(link, target)
    dates = {target: os.stat(target).st_mtime_ns for target in planted.values()}

    export(root, dsn)
    for link, target in planted.items():
        assert target.read_text() == "keep" and os.stat(target).st_mtime_ns == dates[target]
        assert not link.is_symlink() or link.name.endswith(".part")
    assert victim.read_bytes() == b"the blob"
    assert json.loads(victim.with_name("victim.flags").read_text()) == ["PENDING"]
    assert files_of(root, "victim") == ["victim", "victim.flags"]
    assert files_of(root, "gone") == ["gone.deleted"]


@deferred_test
async def test_a_linked_directory_in_the_path_is_refused(backend, dsn, tmp_path):
    await write(backend, "alice", "a1", b"mine")
    await write(backend, "bob", "b1", b"his")
    root, outside = tmp_path / "export", tmp_path / "outside"
    (outside / "default").mkdir(parents=True)
    root.mkdir()
    os.symlink(outside, root / "bob")
    done = pgblobs_cli("export-fs", str(root), "--dsn", dsn)
    assert done.returncode == 1
    assert "bob: a symbolic link, not followed" in done.stderr
    assert "exported 1 blob(s)" in done.stdout and "failed 1" in done.stdout
    assert os.listdir(outside) == ["default"] and os.listdir(outside / "default") == []
    assert blob_path(root, "alice", "default", "a1").read_bytes() == b"mine"


TRACED = ("fsync", "rename", "renameat", "renameat2")
SYSCALL = re.compile(rf"^(?:\d+ +)?({'|'.join(TRACED)})\((.*)\) += 0")
PATH_OF_FD = re.compile(r"\d+<([^>]*)>")
STRING = re.compile(r'"([^"]*)"')


def durable_steps(trace):
    """From an strace -y log: ("fsync", path) and ("rename", target) in order."""
    steps = []
    for line in trace.splitlines():
        match = SYSCALL.match(line)
        if not match:
            continue
        call, arguments = match.groups()
        if call == "fsync":
            steps.append(("fsync", PATH_OF_FD.match(arguments).group(1)))
        elif call == "rename":
            steps.append(("rename", STRING.findall(arguments)[1]))
        else:
            directories, names = PATH_OF_FD.findall(arguments), STRING.findall(arguments)
            steps.append(("rename", os.path.join(directories[-1], names[1])))
    return steps


@deferred_test
async def test_every_file_and_its_directory_are_fsynced_before_it_counts(backend, dsn, tmp_path):
    await write(backend, "alice", "live", b"content")
    await backend.set_flags("alice", "live", ["PENDING"])
    await write(backend, "alice", "dead", b"x")
    await backend.delete_blob("alice", "dead")
    root, trace = tmp_path / "export", tmp_path / "strace.log"
    strace = ["strace", "-f", "-qq", "-y", "-o", str(trace), "-e", "trace=" + ",".join(TRACED)]
    done = subprocess.run(
        [*strace, *pgblobs_command("export-fs", str(root), "--dsn", dsn)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    steps = durable_steps(trace.read_text())
    renamed = [target for call, target in steps if call == "rename"]
    live, dead = (blob_path(root, "alice", "default", name) for name in ("live", "dead"))
    expected = {str(live), str(live.with_name("live.flags")), str(dead.with_name("dead.deleted"))}
    assert set(renamed) == expected
    for target in renamed:
        at = steps.index(("rename", target))
        assert ("fsync", target + ".part") in steps[:at], f"{target} renamed before its fsync"
        following = steps[at + 1 :]
        next_rename = next((i for i, (call, _) in enumerate(following) if call == "rename"), None)
        assert ("fsync", os.path.dirname(target)) in following[:next_rename], (
            f"{target}: its directory was not fsynced before the export moved on"
        )
