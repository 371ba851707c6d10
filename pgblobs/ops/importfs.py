"""Moving a Soledad filesystem blob store into pgblobs.

The layout (PROTOCOL.md): ``{root}/{user}/{namespace}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}``
holds a blob, ``{that}.flags`` its flags as JSON, ``{that}.deleted`` marks a
tombstone; a file's mtime is the blob's date. Each blob is imported in its
own transaction and anything already in pgblobs is skipped, so a second run
imports nothing and an interrupted run resumes where it stopped.
"""

import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import errorcodes

from pgblobs import names
from pgblobs.errors import InvalidFlag, InvalidName
from pgblobs.ops.output import progress
from pgblobs.transfer import CHUNK, ContentDigest

_FLAGS, _DELETED = ".flags", ".deleted"


@dataclass
class Entry:
    path: Path  # the blob file, or its .deleted marker for a tombstone
    user: str
    namespace: str
    blob_id: str
    tombstone: bool

    def flags_path(self):
        return self.path.with_name(self.blob_id + _FLAGS)


@dataclass
class ImportReport:
    imported: int = 0
    tombstones: int = 0
    bytes: int = 0
    skipped: list = field(default_factory=list)  # (path, reason)
    failed: list = field(default_factory=list)  # (path, reason)


def _mtime(path):
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)


def scan(root, report, only_user=None):
    """The entries of a tree, in a stable order; misplaced or misnamed files
    go to ``report.failed``."""
    root = Path(root)
    for user_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if only_user is not None and user_dir.name != only_user:
            continue
        for namespace_dir in sorted(p for p in user_dir.iterdir() if p.is_dir()):
            for directory, subdirectories, files in os.walk(namespace_dir):
                subdirectories.sort()
                present = set(files)
                for name in sorted(files):
                    entry = _entry(
                        Path(directory),
                        name,
                        present,
                        user_dir.name,
                        namespace_dir.name,
                        namespace_dir,
                        report,
                    )
                    if entry is not None:
                        yield entry


def _entry(directory, name, present, user, namespace, namespace_dir, report):
    path = directory / name
    if name.endswith(_FLAGS):
        return None  # read with its blob
    tombstone = name.endswith(_DELETED)
    blob_id = name[: -len(_DELETED)] if tombstone else name
    if not tombstone and blob_id + _DELETED in present:
        return None  # deleted: its marker stands for it
    try:
        key = names.BlobKey.of(user, blob_id, namespace)
    except InvalidName as error:
        report.failed.append((path, str(error)))
        return None
    expected = namespace_dir / blob_id[0] / blob_id[:3] / blob_id[:6]
    if directory != expected:
        report.failed.append((path, f"not where the layout puts it ({expected})"))
        return None
    return Entry(path, key.user, key.namespace, key.blob_id, tombstone)


class _AlreadyThere(Exception):
    """The blob was written through the API while we imported it."""


def import_tree(connection, root, only_user=None, dry_run=False):
    report = ImportReport()
    entries = list(scan(root, report, only_user))
    total = sum(e.path.stat().st_size for e in entries if not e.tombstone)
    started = time.monotonic()
    with progress(total, "B", "importing", unit_scale=True) as bar:
        for done, entry in enumerate(entries, 1):
            bar.set_postfix_str(
                f"{done / max(time.monotonic() - started, 1e-6):.0f} blobs/s", refresh=False
            )
            try:
                _import_one(connection, entry, report, dry_run, bar)
            except _AlreadyThere:
                report.skipped.append((entry.path, "written through the API meanwhile"))
            except (OSError, ValueError, psycopg2.Error) as error:
                report.failed.append((entry.path, str(error).strip().splitlines()[0]))
    return report


def _import_one(connection, entry, report, dry_run, bar):
    params = {"user": entry.user, "namespace": entry.namespace, "blob_id": entry.blob_id}
    if connection.fetch_one("existing_blob", params) is not None:
        report.skipped.append((entry.path, "already in pgblobs"))
        if not entry.tombstone:
            bar.update(entry.path.stat().st_size)
        return
    if entry.tombstone:
        if not dry_run:
            date = _mtime(entry.path)
            connection.execute("import_tombstone", dict(params, created_at=date, deleted_at=date))
        report.tombstones += 1
        return
    flags = _read_flags(entry)
    size = entry.path.stat().st_size if dry_run else _store(connection, entry, params, flags, bar)
    report.imported += 1
    report.bytes += size


def _read_flags(entry):
    path = entry.flags_path()
    if not path.exists():
        return []
    try:
        return names.flag_list(json.loads(path.read_text()))
    except (ValueError, InvalidFlag) as error:
        raise ValueError(f"bad flags file {path.name}: {error}") from None


def _store(connection, entry, params, flags, bar):
    digest = ContentDigest()
    try:
        with connection.transaction():
            large_object = connection.large_object(0, "wb")
            with open(entry.path, "rb") as source:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    large_object.write(chunk)
                    bar.update(len(chunk))
            large_object.close()
            row = connection.fetch_one(
                "import_blob",
                dict(
                    params,
                    oid=large_object.oid,
                    size=digest.size,
                    tag=digest.tag,
                    sha256=digest.sha256,
                    created_at=_mtime(entry.path),
                ),
            ).id
            if flags:
                connection.execute("import_flags", dict(params, row=row, flags=flags))
    except psycopg2.IntegrityError as error:
        if error.pgcode == errorcodes.UNIQUE_VIOLATION:
            raise _AlreadyThere() from None
        raise
    return digest.size
