"""`pgblobs export-fs`: the Soledad filesystem layout written back out, read
again by import-fs with nothing changed."""

import os

from tests.helpers import pgblobs_cli, sql
from tests.ops.test_import_fs import make_store

ROWS = (
    "SELECT b.user_id, b.namespace, b.blob_id, b.size, b.sha256, b.created_at, b.deleted_at, "
    "ARRAY(SELECT flag FROM pgblobs.blob_flags WHERE blob_row = b.id ORDER BY flag) "
    "FROM pgblobs.blobs AS b ORDER BY 1, 2, 3"
)


def tree(root):
    """Every file under ``root``: relative path -> (bytes, mtime); a flags
    file's date means nothing to the layout, so it is left out."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as content:
                date = None if name.endswith(".flags") else os.stat(path).st_mtime
                found[os.path.relpath(path, root)] = (content.read(), date)
    return found


def test_import_export_import_changes_nothing(dsn, scratch_dsn, tmp_path):
    original, exported = tmp_path / "original", tmp_path / "exported"
    make_store(original)
    assert pgblobs_cli("import-fs", str(original), "--dsn", dsn).returncode == 0
    done = pgblobs_cli("export-fs", str(exported), "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert tree(exported) == tree(original)

    # Interrupted and run again: what is there is kept, the rest written.
    victim = next(path for path in tree(exported) if not path.endswith((".flags", ".deleted")))
    os.remove(exported / victim)
    again = pgblobs_cli("export-fs", str(exported), "--dsn", dsn)
    assert again.returncode == 0, again.stderr
    assert "exported 1 blob(s)" in again.stdout
    assert tree(exported) == tree(original)

    assert pgblobs_cli("db", "upgrade", "--dsn", scratch_dsn).returncode == 0
    assert pgblobs_cli("import-fs", str(exported), "--dsn", scratch_dsn).returncode == 0
    assert sql(scratch_dsn, ROWS) == sql(dsn, ROWS)


def test_export_one_user_only(dsn, tmp_path):
    make_store(tmp_path / "original")
    pgblobs_cli("import-fs", str(tmp_path / "original"), "--dsn", dsn)
    done = pgblobs_cli("export-fs", str(tmp_path / "bob"), "--user", "bob", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "bob") == ["bob"]
