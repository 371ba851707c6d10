"""Moving a Soledad filesystem blob store into pgblobs.

The layout (PROTOCOL.md): ``{root}/{user}/{namespace}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}``
holds a blob, ``{that}.flags`` its flags as JSON, ``{that}.deleted`` marks a
tombstone; a file's mtime is the blob's date.

Blobs go in batches of ``BATCH``: one statement finds what is already there,
one stores the small blobs with their content inline, one the tombstones,
and the batch commits once (one WAL flush for hundreds of blobs); large
blobs stream into large objects inside the same transaction. Anything
already in pgblobs is skipped, so a second run imports nothing and an
interrupted run resumes after its last committed batch. A batch that fails
(an unreadable file, a blob written through the API meanwhile) is rolled
back and imported again one blob at a time, so only the culprit is reported.
"""

import datetime
import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import errorcodes

from pgblobs import names
from pgblobs.backend import INLINE_LIMIT
from pgblobs.errors import InvalidFlag, InvalidName
from pgblobs.ops.output import progress
from pgblobs.transfer import CHUNK, ContentDigest

FLAGS, DELETED = ".flags", ".deleted"


@dataclass
class Entry:
    path: Path  # the blob file, or its .deleted marker for a tombstone
    user: str
    namespace: str
    blob_id: str
    tombstone: bool

    def flags_path(self):
        return self.path.with_name(self.blob_id + FLAGS)


@dataclass
class ImportReport:
    imported: int = 0
    tombstones: int = 0
    bytes: int = 0
    skipped: list = field(default_factory=list)  # (path, reason)
    failed: list = field(default_factory=list)  # (path, reason)

    def merge(self, other):
        self.imported += other.imported
        self.tombstones += other.tombstones
        self.bytes += other.bytes
        self.skipped += other.skipped
        self.failed += other.failed


def blob_path(root, user, namespace, blob_id):
    """Where the layout keeps a blob."""
    return Path(root, user, namespace, blob_id[0], blob_id[:3], blob_id[:6], blob_id)


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
    if name.endswith(FLAGS):
        return None  # read with its blob
    tombstone = name.endswith(DELETED)
    blob_id = name[: -len(DELETED)] if tombstone else name
    if not tombstone and blob_id + DELETED in present:
        return None  # deleted: its marker stands for it
    try:
        key = names.BlobKey.of(user, blob_id, namespace)
    except InvalidName as error:
        report.failed.append((path, str(error)))
        return None
    expected = blob_path(namespace_dir.parent.parent, user, namespace, blob_id).parent
    if directory != expected:
        report.failed.append((path, f"not where the layout puts it ({expected})"))
        return None
    return Entry(path, key.user, key.namespace, key.blob_id, tombstone)


class _AlreadyThere(Exception):
    """The blob was written through the API while we imported it."""


BATCH = 200  # blobs per transaction


def import_tree(connections, root, only_user=None, dry_run=False):
    """Import the tree at ``root``, a batch at a time on each of
    ``connections`` (SyncConnections) at once."""
    report = ImportReport()
    entries = list(scan(root, report, only_user))
    batches = [entries[first : first + BATCH] for first in range(0, len(entries), BATCH)]
    idle: queue.SimpleQueue = queue.SimpleQueue()
    for connection in connections:
        idle.put(connection)
    merging = threading.Lock()
    done = 0
    started = time.monotonic()
    total = sum(e.path.stat().st_size for e in entries if not e.tombstone)
    with progress(total, "B", "importing", unit_scale=True) as bar:

        def run(batch):
            nonlocal done
            connection = idle.get()
            try:
                outcome = _import_or_isolate(connection, batch, dry_run)
            finally:
                idle.put(connection)
            with merging:
                report.merge(outcome)
                done += len(batch)
                bar.update(sum(e.path.stat().st_size for e in batch if not e.tombstone))
                bar.set_postfix_str(f"{done / max(time.monotonic() - started, 1e-6):.0f} blobs/s")

        with ThreadPoolExecutor(len(connections)) as pool:
            list(pool.map(run, batches))
    return report


def _import_or_isolate(connection, batch, dry_run):
    """The batch in one transaction; if that fails, each entry in its own,
    so only the culprit is reported."""
    outcome = ImportReport()
    try:
        _import_batch(connection, batch, outcome, dry_run)
    except (OSError, ValueError, psycopg2.Error, _AlreadyThere):
        outcome = ImportReport()
        for entry in batch:
            _import_alone(connection, entry, outcome, dry_run)
    return outcome


def _arrays(entries, **columns):
    """The parameters of a statement over ``entries``: their names as
    arrays, and each of ``columns`` (a list per entry)."""
    return dict(
        users=[e.user for e in entries],
        namespaces=[e.namespace for e in entries],
        blob_ids=[e.blob_id for e in entries],
        **columns,
    )


def _import_batch(connection, batch, report, dry_run):
    present = {row.position for row in connection.fetch("existing_blobs", _arrays(batch))}
    todo = [entry for position, entry in enumerate(batch, 1) if position not in present]
    tombstones = [entry for entry in todo if entry.tombstone]
    blobs = [entry for entry in todo if not entry.tombstone]
    flags = {id(entry): _read_flags(entry) for entry in blobs}
    sizes = {id(entry): entry.path.stat().st_size for entry in blobs}
    if not dry_run:
        small = [entry for entry in blobs if sizes[id(entry)] <= INLINE_LIMIT]
        with connection.transaction():
            for entry in blobs:
                if sizes[id(entry)] > INLINE_LIMIT:
                    sizes[id(entry)] = _store(connection, entry, flags[id(entry)])
            if small:
                _store_small(connection, small, flags)
            if tombstones:
                dates = [_mtime(entry.path) for entry in tombstones]
                connection.execute("import_tombstones", _arrays(tombstones, dates=dates))
    for position, entry in enumerate(batch, 1):
        if position in present:
            report.skipped.append((entry.path, "already in pgblobs"))
    report.tombstones += len(tombstones)
    report.imported += len(blobs)
    report.bytes += sum(sizes.values())


def _store_small(connection, entries, flags):
    contents, digests = [], []
    for entry in entries:
        contents.append(entry.path.read_bytes())
        digests.append(ContentDigest())
        digests[-1].update(contents[-1])
    try:
        connection.execute(
            "import_small_blobs",
            _arrays(
                entries,
                contents=[psycopg2.Binary(content) for content in contents],
                tags=[digest.tag for digest in digests],
                sha256s=[psycopg2.Binary(digest.sha256) for digest in digests],
                dates=[_mtime(entry.path) for entry in entries],
                flags=[",".join(flags[id(entry)]) for entry in entries],
            ),
        )
    except psycopg2.IntegrityError as error:
        if error.pgcode == errorcodes.UNIQUE_VIOLATION:
            raise _AlreadyThere() from None
        raise


def _import_alone(connection, entry, report, dry_run):
    """One entry in its own transaction, its failure reported as its own."""
    try:
        _import_batch(connection, [entry], report, dry_run)
    except _AlreadyThere:
        report.skipped.append((entry.path, "written through the API meanwhile"))
    except (OSError, ValueError, psycopg2.Error) as error:
        report.failed.append((entry.path, str(error).strip().splitlines()[0]))


def _read_flags(entry):
    path = entry.flags_path()
    if not path.exists():
        return []
    try:
        return names.flag_list(json.loads(path.read_text()))
    except (ValueError, InvalidFlag) as error:
        raise ValueError(f"bad flags file {path.name}: {error}") from None


def _store(connection, entry, flags):
    """A large blob, streamed into a large object in the caller's transaction."""
    digest = ContentDigest()
    params = {"user": entry.user, "namespace": entry.namespace, "blob_id": entry.blob_id}
    try:
        large_object = connection.large_object(0, "wb")
        with open(entry.path, "rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                large_object.write(chunk)
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
