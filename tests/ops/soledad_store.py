"""A Soledad filesystem blob store, changed on disk exactly as Soledad's
FilesystemBlobsBackend (leap/soledad/server/_blobs/fs_backend.py) changes it,
and what such a store holds, read back from the disk and from pgblobs.

What that backend does on disk, and so what this one does:
- write: makes the directories, refuses an id whose blob file exists, and
  writes the blob file in place (``open(path, 'wb')``, the body in chunks as
  it arrives: no temporary file, no rename). A ``.deleted`` marker of an
  earlier delete is left where it is.
- set_flags: only on an existing blob file; rewrites ``{path}.flags`` in place
  (``open(..., 'w')``: truncated, then the JSON list written).
- delete: only on an existing blob file; touches ``{path}.deleted`` in append
  mode (an existing marker keeps its date), unlinks the blob file, then its
  ``.flags`` if there is one.
"""

import hashlib
import json
import os
from pathlib import Path

from tests.helpers import sql
from tests.ops.test_import_fs import blob_path

CHUNK = 64 * 1024  # what twisted's FileBodyProducer hands the backend at a time


class SoledadStore:
    def __init__(self, root):
        self.root = Path(root)

    def path(self, user, blob_id, namespace="default"):
        return blob_path(self.root, user, namespace, blob_id)

    def write(self, user, blob_id, data, namespace="default"):
        path = self.path(user, blob_id, namespace)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            raise FileExistsError(path)
        with open(path, "wb") as blob_file:
            for start in range(0, len(data), CHUNK):
                blob_file.write(data[start : start + CHUNK])
                blob_file.flush()

    def set_flags(self, user, blob_id, flags, namespace="default"):
        path = self.path(user, blob_id, namespace)
        if not path.is_file():
            raise FileNotFoundError(path)
        with open(f"{path}.flags", "w") as flags_file:
            flags_file.write(json.dumps(flags))

    def delete(self, user, blob_id, namespace="default"):
        path = self.path(user, blob_id, namespace)
        if not path.is_file():
            raise FileNotFoundError(path)
        open(f"{path}.deleted", "a").close()
        os.unlink(path)
        try:
            os.unlink(f"{path}.flags")
        except FileNotFoundError:
            pass


def on_disk(root):
    """What the store at ``root`` holds, as Soledad serves it: its live blobs
    {(user, namespace, id): (sha256, sorted flags)} and its tombstones (a
    marker without a blob file beside it), as a set of names."""
    live, tombstones = {}, set()
    for directory, _, files in os.walk(root):
        relative = Path(directory).relative_to(root).parts
        for name in files:
            if name.endswith(".flags"):
                continue
            if name.endswith(".deleted"):
                if name.removesuffix(".deleted") not in files:
                    tombstones.add((relative[0], relative[1], name.removesuffix(".deleted")))
                continue
            path = Path(directory, name)
            flags_path = Path(directory, name + ".flags")
            flags = sorted(json.loads(flags_path.read_text())) if flags_path.exists() else []
            live[(relative[0], relative[1], name)] = (
                hashlib.sha256(path.read_bytes()).digest(),
                flags,
            )
    return live, tombstones


def in_pgblobs(dsn):
    """What pgblobs holds, in on_disk's terms: each live blob's sha256 computed
    from the bytes in its large object, not taken from the row."""
    live = {
        (user, namespace, blob_id): (bytes(digest), list(flags))
        for user, namespace, blob_id, digest, flags in sql(
            dsn,
            "SELECT b.user_id, b.namespace, b.blob_id, sha256(lo_get(b.lo_oid)),"
            " ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f"
            "       WHERE f.blob_row = b.id ORDER BY f.flag)"
            " FROM pgblobs.blobs AS b WHERE b.deleted_at IS NULL",
        )
    }
    tombstones = {
        tuple(name)
        for name in sql(
            dsn,
            "SELECT DISTINCT user_id, namespace, blob_id FROM pgblobs.blobs"
            " WHERE deleted_at IS NOT NULL",
        )
    }
    return live, tombstones - set(live)
