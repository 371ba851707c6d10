"""A Soledad filesystem blob store, changed on disk exactly as Soledad's
``FilesystemBlobsBackend`` (leap/soledad/server/_blobs/fs_backend.py) changes it:

- write: the directories made, then the blob file opened for writing at its
  final path and written there, chunk by chunk (no temporary file, no rename:
  a reader can see it half written); refused when the file exists.
- set flags: ``{blob}.flags`` opened with truncation and written with the
  JSON list (no rename either: a reader can see it empty); refused when the
  blob file does not exist.
- delete: ``{blob}.deleted`` touched (opened for appending, which creates it
  and leaves an existing one's mtime alone), then the blob file unlinked, then
  its flags file, if any.
"""

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.ops.test_import_fs import blob_path


class SoledadStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, user: str, namespace: str, blob_id: str) -> Path:
        return blob_path(self.root, user, namespace, blob_id)

    def write(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        chunks: Iterable[bytes],
        between_chunks: Callable[[], None] = lambda: None,
    ) -> None:
        path = self.path(user, namespace, blob_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            raise FileExistsError(path)
        with open(path, "wb") as blob_file:
            for chunk in chunks:
                blob_file.write(chunk)
                blob_file.flush()
                between_chunks()

    def set_flags(self, user: str, namespace: str, blob_id: str, flags: list[str]) -> None:
        path = self.path(user, namespace, blob_id)
        if not path.is_file():
            raise FileNotFoundError(path)
        with open(f"{path}.flags", "w") as flags_file:
            flags_file.write(json.dumps(flags))

    def delete(self, user: str, namespace: str, blob_id: str) -> None:
        path = self.path(user, namespace, blob_id)
        if not path.is_file():
            raise FileNotFoundError(path)
        open(f"{path}.deleted", "a").close()
        os.unlink(path)
        try:
            os.unlink(f"{path}.flags")
        except OSError:
            pass
