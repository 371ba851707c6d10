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
shrunk, is a torn copy). Each of those fails with its reason: a blob left
out must not pass for a clean run, since the old store is retired after one.

Inside a batch's transaction the contents are written first (large ones
into large objects), and only then the per-user lock of the batch's users is
taken (``pgblobs.lock_users``, as every writer of blob rows does) for the
row inserts: held for milliseconds, never while a large file streams.
"""

import datetime
import errno
import json
import os
import queue
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import errorcodes

from pgblobs import names
from pgblobs.errors import InvalidFlag, InvalidName
from pgblobs.ops.output import progress
from pgblobs.transfer import CHUNK, ContentDigest
from pgblobs.versions import INLINE_LIMIT

FLAGS, DELETED = ".flags", ".deleted"


@dataclass
class Entry:
    path: Path  # the blob file, or its .deleted marker for a tombstone
    user: str
    namespace: str
    blob_id: str
    tombstone: bool
    status: os.stat_result  # lstat while scanning: a marker's date, a blob's size for progress

    def flags_path(self):
        return self.path.with_name(self.blob_id + FLAGS)

    @property
    def size(self) -> int:
        return 0 if self.tombstone else self.status.st_size


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


LINK = "a symbolic link, not followed"
_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


def unfit(mode: int) -> str | None:
    """Why a file of this mode (from lstat or fstat) is not read; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return LINK
    kind = next((kind for test, kind in _NOT_REGULAR if test(mode)), "a special file")
    return f"{kind}, not a regular file"


class UnfitFile(ValueError):
    """A file that is not read: not a regular file, or one that changed while read."""


def _date(status: os.stat_result) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(status.st_mtime, datetime.UTC)


class RegularFile:
    """A regular file opened without following a link (O_NOFOLLOW) and without
    blocking on a FIFO or device (O_NONBLOCK; fstat then refuses them), read
    up to its size at open and no further."""

    def __init__(self, path: str | os.PathLike, dir_fd: int | None = None) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnfitFile(LINK) from None
            raise
        self.status = os.fstat(self._fd)
        reason = unfit(self.status.st_mode)
        if reason is not None:
            os.close(self._fd)
            raise UnfitFile(reason)

    def __enter__(self) -> "RegularFile":
        return self

    def __exit__(self, *exception: object) -> None:
        os.close(self._fd)

    @property
    def size(self) -> int:
        return self.status.st_size

    @property
    def date(self) -> datetime.datetime:
        return _date(self.status)

    def chunks(self) -> Iterator[bytes]:
        """The content, ``size`` bytes at most; UnfitFile at the end if the file
        changed meanwhile (a torn copy must not pass for the blob)."""
        left = self.size
        while left and (chunk := os.read(self._fd, min(CHUNK, left))):
            left -= len(chunk)
            yield chunk
        after = os.fstat(self._fd)
        if left or (after.st_size, after.st_mtime_ns) != (self.size, self.status.st_mtime_ns):
            raise UnfitFile(
                f"changed while read ({self.size} bytes when opened, {after.st_size} after)"
            )


def _subdirectories(directory: Path, report: "ImportReport", only: str | None = None) -> list[Path]:
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


def scan(root, report, only_user=None):
    """The entries of a tree, in a stable order; misplaced or misnamed files,
    links and special files go to ``report.failed``."""
    root = Path(root)
    for user_dir in _subdirectories(root, report, only_user):
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
    status = os.lstat(path)
    reason = unfit(status.st_mode)
    if reason is not None:
        report.failed.append((path, reason))
        return None
    return Entry(path, key.user, key.namespace, key.blob_id, tombstone, status)


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
    total = sum(entry.size for entry in entries)
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
                bar.update(sum(entry.size for entry in batch))
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


@dataclass
class _Content:
    """A blob's content, read: inline when small, else already in a large object."""

    entry: Entry
    digest: ContentDigest
    created_at: datetime.datetime
    oid: int | None = None
    data: bytes | None = None


def _import_batch(connection, batch, report, dry_run):
    present = {row.position for row in connection.fetch("existing_blobs", _arrays(batch))}
    todo = [entry for position, entry in enumerate(batch, 1) if position not in present]
    tombstones = [entry for entry in todo if entry.tombstone]
    blobs = [entry for entry in todo if not entry.tombstone]
    flags = {id(entry): _read_flags(entry) for entry in blobs}
    sizes: list[int] = []
    if dry_run:
        sizes = [_size(entry) for entry in blobs]
    elif todo:
        with connection.transaction():
            contents = [_load(connection, entry) for entry in blobs]
            _insert_rows(connection, contents, flags, tombstones)
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


def _load(connection, entry: Entry) -> _Content:
    """A blob file's content: read when small, streamed into a new large object
    (in the caller's transaction) when large."""
    digest = ContentDigest()
    with RegularFile(entry.path) as source:
        if source.size <= INLINE_LIMIT:
            data = b"".join(source.chunks())
            digest.update(data)
            return _Content(entry, digest, source.date, data=data)
        large_object = connection.large_object(0, "wb")
        for chunk in source.chunks():
            digest.update(chunk)
            large_object.write(chunk)
        large_object.close()
        return _Content(entry, digest, source.date, oid=large_object.oid)


def _insert_rows(connection, contents: list[_Content], flags, tombstones: list[Entry]) -> None:
    """The rows of a batch whose contents are all written, under its users'
    lock, taken only now so that it is held for these inserts alone."""
    entries = [content.entry for content in contents] + tombstones
    connection.execute("lock_users", {"users": [entry.user for entry in entries]})
    # The names were found free before the lock: an API write (a tombstone
    # too) may have taken one since, and inserting over it would revive or
    # double it. Under the lock the answer holds until the commit.
    if connection.fetch("existing_blobs", _arrays(entries)):
        raise _AlreadyThere()
    try:
        for content in contents:
            if content.oid is not None:
                _insert_large(connection, content, flags[id(content.entry)])
        small = [content for content in contents if content.data is not None]
        if small:
            _insert_small(connection, small, flags)
        if tombstones:
            dates = [_date(entry.status) for entry in tombstones]
            connection.execute("import_tombstones", _arrays(tombstones, dates=dates))
    except psycopg2.IntegrityError as error:
        if error.pgcode == errorcodes.UNIQUE_VIOLATION:
            raise _AlreadyThere() from None
        raise


def _insert_small(connection, contents: list[_Content], flags) -> None:
    connection.execute(
        "import_small_blobs",
        _arrays(
            [content.entry for content in contents],
            contents=[psycopg2.Binary(content.data) for content in contents],
            tags=[content.digest.tag for content in contents],
            sha256s=[psycopg2.Binary(content.digest.sha256) for content in contents],
            dates=[content.created_at for content in contents],
            flags=[",".join(flags[id(content.entry)]) for content in contents],
        ),
    )


def _insert_large(connection, content: _Content, flags: list[str]) -> None:
    """A large blob's row, its content already in its large object."""
    entry, digest = content.entry, content.digest
    params = {"user": entry.user, "namespace": entry.namespace, "blob_id": entry.blob_id}
    row = connection.fetch_one(
        "import_blob",
        dict(
            params,
            oid=content.oid,
            size=digest.size,
            tag=digest.tag,
            sha256=digest.sha256,
            created_at=content.created_at,
        ),
    ).id
    if flags:
        connection.execute("import_flags", dict(params, row=row, flags=flags))


def _import_alone(connection, entry, report, dry_run):
    """One entry in its own transaction, its failure reported as its own."""
    try:
        _import_batch(connection, [entry], report, dry_run)
    except _AlreadyThere:
        report.skipped.append((entry.path, "written through the API meanwhile"))
    except (OSError, ValueError, psycopg2.Error) as error:
        report.failed.append((entry.path, str(error).strip().splitlines()[0]))


_FLAGS_LIMIT = 4096  # bytes; four flags in JSON take under 60


def _read_flags(entry):
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
