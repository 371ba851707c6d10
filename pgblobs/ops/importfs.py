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

Only regular files and real directories are read: a symbolic link is never
followed (found with lstat while scanning, refused by O_NOFOLLOW when
opened), FIFOs, devices and sockets are never read, and a file is read up to
its size when opened and no further (one that changed meanwhile, grown or
shrunk, is a torn copy; files.py). Each of those fails with its reason: a
blob left out must not pass for a clean run, since the old store is retired
after one.

Inside a batch's transaction the contents are written first (large ones
into large objects), and only then the per-user lock of the batch's users is
taken (``pgblobs.lock_users``, as every writer of blob rows does) for the
row inserts: held for milliseconds, never while a large file streams.
"""

import datetime
import json
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import errorcodes

from pgblobs import names
from pgblobs.db.sync import SyncConnection
from pgblobs.errors import InvalidFlag, InvalidName
from pgblobs.ops.files import LINK, RegularFile, UnfitFile, file_date, unfit
from pgblobs.ops.output import first_line, progress
from pgblobs.transfer import ContentDigest
from pgblobs.versions import INLINE_LIMIT

FLAGS, DELETED = ".flags", ".deleted"


@dataclass
class Entry:
    path: Path  # the blob file, or its .deleted marker for a tombstone
    key: names.BlobKey
    tombstone: bool
    status: os.stat_result  # lstat while scanning: a marker's date, a blob's size for progress

    def flags_path(self) -> Path:
        return self.path.with_name(self.key.blob_id + FLAGS)

    @property
    def size(self) -> int:
        return 0 if self.tombstone else self.status.st_size


@dataclass
class ImportReport:
    imported: int = 0
    tombstones: int = 0
    bytes: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)

    def merge(self, other: "ImportReport") -> None:
        self.imported += other.imported
        self.tombstones += other.tombstones
        self.bytes += other.bytes
        self.skipped += other.skipped
        self.failed += other.failed


def blob_path(root: str | os.PathLike[str], user: str, namespace: str, blob_id: str) -> Path:
    """Where the layout keeps a blob."""
    return Path(root, user, namespace, blob_id[0], blob_id[:3], blob_id[:6], blob_id)


def _subdirectories(directory: Path, report: ImportReport, only: str | None = None) -> list[Path]:
    """The real directories in ``directory`` (only the one named ``only``, if
    given), by name; links are reported, never followed."""
    found = []
    for item in sorted(os.scandir(directory), key=lambda item: item.name):
        if only is not None and item.name != only:
            continue
        if item.is_symlink():
            report.failed.append((Path(item.path), LINK))
        elif item.is_dir(follow_symlinks=False):
            found.append(Path(item.path))
    return found


def scan(
    root: str | os.PathLike[str], report: ImportReport, only_user: str | None = None
) -> Iterator[Entry]:
    """The entries of a tree, in a stable order; misplaced or misnamed files,
    links and special files go to ``report.failed``."""
    for user_dir in _subdirectories(Path(root), report, only_user):
        for namespace_dir in _subdirectories(user_dir, report):
            # os.walk lists links to directories among the subdirectories and,
            # with followlinks false, never enters them; report them here.
            for directory, subdirectories, files in os.walk(namespace_dir, followlinks=False):
                for name in [d for d in subdirectories if os.path.islink(Path(directory, d))]:
                    report.failed.append((Path(directory, name), LINK))
                    subdirectories.remove(name)
                subdirectories.sort()
                present = set(files)
                for name in sorted(files):
                    entry = _entry(namespace_dir, Path(directory), name, present, report)
                    if entry is not None:
                        yield entry


def _entry(
    namespace_dir: Path, directory: Path, name: str, present: set[str], report: ImportReport
) -> Entry | None:
    """The entry the file ``name`` in ``directory`` (below ``namespace_dir``,
    whose siblings ``present`` are) stands for, if any; None for a flags file
    or a blob that a marker beside it says is deleted, and for a file that
    fails (in ``report``)."""
    path = directory / name
    if name.endswith(FLAGS):
        return None  # read with its blob
    tombstone = name.endswith(DELETED)
    blob_id = name[: -len(DELETED)] if tombstone else name
    if not tombstone and blob_id + DELETED in present:
        return None  # deleted: its marker stands for it
    user_dir = namespace_dir.parent
    try:
        key = names.BlobKey.of(user_dir.name, blob_id, namespace_dir.name)
    except InvalidName as error:
        report.failed.append((path, str(error)))
        return None
    expected = blob_path(user_dir.parent, key.user, key.namespace, key.blob_id).parent
    if directory != expected:
        report.failed.append((path, f"not where the layout puts it ({expected})"))
        return None
    status = os.lstat(path)
    reason = unfit(status.st_mode)
    if reason is not None:
        report.failed.append((path, reason))
        return None
    return Entry(path, key, tombstone, status)


class _AlreadyThere(Exception):
    """The blob was written through the API while we imported it."""


BATCH = 200  # blobs per transaction


def import_tree(
    connections: Sequence[SyncConnection],
    root: str | os.PathLike[str],
    only_user: str | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """Import the tree at ``root``, a batch at a time on each of
    ``connections`` at once."""
    report = ImportReport()
    entries = list(scan(root, report, only_user))
    batches = [entries[first : first + BATCH] for first in range(0, len(entries), BATCH)]
    idle: queue.SimpleQueue[SyncConnection] = queue.SimpleQueue()
    for connection in connections:
        idle.put(connection)
    merging = threading.Lock()
    done = 0
    started = time.monotonic()
    total = sum(entry.size for entry in entries)
    with progress(total, "importing") as bar:

        def run(batch: list[Entry]) -> None:
            nonlocal done
            connection = idle.get()
            try:
                outcome = _import_or_isolate(connection, batch, dry_run)
            finally:
                idle.put(connection)
            with merging:
                report.merge(outcome)
                done += len(batch)
                bar.update(sum(entry.size for entry in batch))
                bar.set_postfix_str(f"{done / max(time.monotonic() - started, 1e-6):.0f} blobs/s")

        with ThreadPoolExecutor(len(connections)) as pool:
            list(pool.map(run, batches))
    return report


def _import_or_isolate(
    connection: SyncConnection, batch: list[Entry], dry_run: bool
) -> ImportReport:
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


def _arrays(entries: Sequence[Entry], **columns: Sequence[object]) -> dict[str, Sequence[object]]:
    """The parameters of a statement over ``entries``: their names as
    arrays, and each of ``columns`` (a list per entry)."""
    return dict(
        users=[e.key.user for e in entries],
        namespaces=[e.key.namespace for e in entries],
        blob_ids=[e.key.blob_id for e in entries],
        **columns,
    )


@dataclass
class _Content:
    """A blob's content, read: inline when small, else already in a large
    object; and the flags its row gets."""

    entry: Entry
    digest: ContentDigest
    created_at: datetime.datetime
    flags: list[str]
    oid: int | None = None
    data: bytes | None = None


def _import_batch(
    connection: SyncConnection, batch: Sequence[Entry], report: ImportReport, dry_run: bool
) -> None:
    present = {row.position for row in connection.fetch("existing_blobs", _arrays(batch))}
    todo = [entry for position, entry in enumerate(batch, 1) if position not in present]
    tombstones = [entry for entry in todo if entry.tombstone]
    blobs = [entry for entry in todo if not entry.tombstone]
    # Read before any content is written, and in a dry run too: a bad flags
    # file fails its blob either way.
    flags = [_read_flags(entry) for entry in blobs]
    sizes: list[int] = []
    if dry_run:
        sizes = [_size(entry) for entry in blobs]
    elif todo:
        with connection.transaction():
            contents = [
                _load(connection, entry, its_flags)
                for entry, its_flags in zip(blobs, flags, strict=True)
            ]
            _insert_rows(connection, contents, tombstones)
        sizes = [content.digest.size for content in contents]
    for position, entry in enumerate(batch, 1):
        if position in present:
            report.skipped.append((entry.path, "already in pgblobs"))
    report.tombstones += len(tombstones)
    report.imported += len(blobs)
    report.bytes += sum(sizes)


def _size(entry: Entry) -> int:
    """A blob file's size, checked to be a regular file as an import would."""
    with RegularFile(entry.path) as source:
        return source.size


def _load(connection: SyncConnection, entry: Entry, flags: list[str]) -> _Content:
    """A blob file's content: read when small, streamed into a new large object
    (in the caller's transaction) when large."""
    digest = ContentDigest()
    with RegularFile(entry.path) as source:
        if source.size <= INLINE_LIMIT:
            data = b"".join(source.chunks())
            digest.update(data)
            return _Content(entry, digest, source.date, flags, data=data)
        large_object = connection.large_object(0, "wb")
        for chunk in source.chunks():
            digest.update(chunk)
            large_object.write(chunk)
        large_object.close()
        return _Content(entry, digest, source.date, flags, oid=large_object.oid)


def _insert_rows(
    connection: SyncConnection, contents: list[_Content], tombstones: list[Entry]
) -> None:
    """The rows of a batch whose contents are all written, under its users'
    lock, taken only now so that it is held for these inserts alone."""
    entries = [content.entry for content in contents] + tombstones
    connection.execute("lock_users", {"users": [entry.key.user for entry in entries]})
    # The names were found free before the lock: an API write (a tombstone
    # too) may have taken one since, and inserting over it would revive or
    # double it. Under the lock the answer holds until the commit.
    if connection.fetch("existing_blobs", _arrays(entries)):
        raise _AlreadyThere()
    try:
        for content in contents:
            if content.oid is not None:
                _insert_large(connection, content, content.oid)
        small = [content for content in contents if content.data is not None]
        if small:
            _insert_small(connection, small)
        if tombstones:
            dates = [file_date(entry.status) for entry in tombstones]
            connection.execute("import_tombstones", _arrays(tombstones, dates=dates))
    except psycopg2.IntegrityError as error:
        if error.pgcode == errorcodes.UNIQUE_VIOLATION:
            raise _AlreadyThere() from None
        raise


def _insert_small(connection: SyncConnection, contents: list[_Content]) -> None:
    """Small blobs' rows, their content inline, in one statement."""
    connection.execute(
        "import_small_blobs",
        _arrays(
            [content.entry for content in contents],
            contents=[psycopg2.Binary(content.data) for content in contents],
            tags=[content.digest.tag for content in contents],
            sha256s=[psycopg2.Binary(content.digest.sha256) for content in contents],
            dates=[content.created_at for content in contents],
            flags=[",".join(content.flags) for content in contents],
        ),
    )


def _insert_large(connection: SyncConnection, content: _Content, oid: int) -> None:
    """A large blob's row, its content already in the large object ``oid``."""
    params = content.entry.key.params()
    digest = content.digest
    row = connection.fetch(
        "import_blob",
        dict(
            params,
            oid=oid,
            size=digest.size,
            tag=digest.tag,
            sha256=digest.sha256,
            created_at=content.created_at,
        ),
    )[0].id
    if content.flags:
        connection.execute("import_flags", dict(params, row=row, flags=content.flags))


def _import_alone(
    connection: SyncConnection, entry: Entry, report: ImportReport, dry_run: bool
) -> None:
    """One entry in its own transaction, its failure reported as its own."""
    try:
        _import_batch(connection, [entry], report, dry_run)
    except _AlreadyThere:
        report.skipped.append((entry.path, "written through the API meanwhile"))
    except (OSError, ValueError, psycopg2.Error) as error:
        report.failed.append((entry.path, first_line(error)))


_FLAGS_LIMIT = 4096  # bytes; four flags in JSON take under 60


def _read_flags(entry: Entry) -> list[str]:
    """The flags in a blob's flags file; none when it has no such file."""
    path = entry.flags_path()
    try:
        with RegularFile(path) as source:
            if source.size > _FLAGS_LIMIT:
                raise UnfitFile(f"{source.size} bytes, too large")
            text = b"".join(source.chunks())
    except FileNotFoundError:
        return []
    except UnfitFile as error:
        raise UnfitFile(f"its flags file {path.name}: {error}") from None
    try:
        return names.flag_list(json.loads(text))
    except (ValueError, InvalidFlag) as error:
        raise ValueError(f"bad flags file {path.name}: {error}") from None
