"""`pgblobs import-fs` reads only regular files and walks only real directories:
symbolic links, FIFOs and devices in the tree are reported, never read."""

import os
import subprocess

import pytest

from pgblobs.ops import files
from tests.helpers import pgblobs_command, sql
from tests.ops.test_import_fs import blob_path

# Generous: an import of a handful of files takes a second; a hang never ends.
DEADLINE = 120


def import_fs(root, dsn):
    return subprocess.run(
        pgblobs_command("import-fs", str(root), "--dsn", dsn),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def stored(dsn):
    return sql(dsn, "SELECT user_id, namespace, blob_id, deleted_at IS NOT NULL FROM pgblobs.blobs")


def place(root, user, namespace, blob_id, data=None):
    """The path of a blob in the layout, its directories made; written when ``data``."""
    path = blob_path(root, user, namespace, blob_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        path.write_bytes(data)
    return path


def test_a_blob_linked_to_a_file_outside_the_tree_is_not_imported(dsn, tmp_path):
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"root's secret")
    secret.chmod(0o600)
    place(tree, "alice", "default", "good", b"mine")
    os.symlink(secret, place(tree, "alice", "default", "stolen"))

    done = import_fs(tree, dsn)
    assert done.returncode == 1
    assert "stolen: a symbolic link, not followed" in done.stderr
    assert "imported 1 blob(s)" in done.stdout and "failed 1" in done.stdout
    assert stored(dsn) == [("alice", "default", "good", False)]


def test_a_link_to_dev_zero_fails_at_once(dsn, tmp_path):
    os.symlink("/dev/zero", place(tmp_path, "alice", "default", "zero"))
    done = import_fs(tmp_path, dsn)
    assert done.returncode == 1
    assert "MemoryError" not in done.stderr
    assert "zero: a symbolic link, not followed" in done.stderr
    assert stored(dsn) == []


def test_a_fifo_fails_without_hanging(dsn, tmp_path):
    os.mkfifo(place(tmp_path, "alice", "default", "pipe"))
    place(tmp_path, "alice", "default", "good", b"mine")
    done = import_fs(tmp_path, dsn)
    assert done.returncode == 1
    assert "pipe: a FIFO, not a regular file" in done.stderr
    assert stored(dsn) == [("alice", "default", "good", False)]


def test_linked_directories_are_not_walked(dsn, tmp_path):
    tree, elsewhere = tmp_path / "tree", tmp_path / "elsewhere"
    # A complete store outside the tree, reachable through links at every level.
    place(elsewhere, "mallory", "default", "abcdef1", b"not for import")
    tree.mkdir()
    os.symlink(elsewhere / "mallory", tree / "mallory")
    place(tree, "bob", "default", "good", b"mine")
    os.symlink(elsewhere / "mallory" / "default", tree / "bob" / "mail")
    os.symlink(elsewhere / "mallory" / "default" / "a", tree / "bob" / "default" / "a")

    done = import_fs(tree, dsn)
    assert done.returncode == 1
    for link in ("mallory", "mail", "a"):
        assert f"{link}: a symbolic link, not followed" in done.stderr
    assert "failed 3" in done.stdout
    assert stored(dsn) == [("bob", "default", "good", False)]


def test_linked_flags_files_and_markers_fail_their_blob(dsn, tmp_path):
    outside = tmp_path / "flags.json"
    outside.write_text('["PENDING"]')
    tree = tmp_path / "tree"
    flagged = place(tree, "alice", "default", "flagged", b"data")
    os.symlink(outside, flagged.with_name("flagged.flags"))
    gone = place(tree, "alice", "default", "gone")
    os.symlink(outside, gone.with_name("gone.deleted"))
    os.mkfifo(place(tree, "alice", "default", "piped", b"data").with_name("piped.flags"))
    place(tree, "alice", "default", "good", b"mine")

    done = import_fs(tree, dsn)
    assert done.returncode == 1
    assert "flagged.flags: a symbolic link, not followed" in done.stderr
    assert "gone.deleted: a symbolic link, not followed" in done.stderr
    assert "piped.flags: a FIFO, not a regular file" in done.stderr
    assert stored(dsn) == [("alice", "default", "good", False)]


def test_a_file_is_read_up_to_its_size_at_open_and_no_further(tmp_path):
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 3000)
    with files.RegularFile(path) as source:
        with open(path, "ab") as writer:
            writer.write(b"y" * 5000)
        read = b""
        with pytest.raises(files.UnfitFile, match="changed while read"):
            for chunk in source.chunks():
                read += chunk
    assert read == b"x" * 3000


def test_a_file_that_shrinks_while_read_fails(tmp_path):
    path = tmp_path / "shrinking"
    path.write_bytes(b"x" * 3000)
    with files.RegularFile(path) as source:
        os.truncate(path, 1000)
        with pytest.raises(files.UnfitFile, match="changed while read"):
            b"".join(source.chunks())
