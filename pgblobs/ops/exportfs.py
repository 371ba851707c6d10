"""Writing pgblobs' blobs back out in the Soledad filesystem layout.

The layout is import-fs's (importfs.py): each live blob a file whose mtime
is its date, ``.flags`` beside it when it has flags, a ``.deleted`` marker
(dated when it was deleted) for each tombstone. DIR may hold an earlier
export: a re-run writes what is missing or stale and leaves the rest.

Nothing already in DIR is followed. Each directory of a blob's path is
entered from the one above it with O_NOFOLLOW (or made there), so a
component that is a symbolic link fails that blob; each file is written as
a ``.part`` created afresh (O_CREAT|O_EXCL|O_NOFOLLOW, after unlinking
whatever had that name) and renamed over its name, so a link by that name
is replaced, never written through.

A file there is current when it is a regular file with the row's size,
date and sha256; the content is read again to know, since the layout has no
room to record what was written (Soledad and import-fs read every file in
it) and only content identity tells a blob rewritten with the same size.
Each blob ends as exactly one of ``id`` (with ``id.flags`` only when it has
flags) or ``id.deleted``: the other names are removed once the new one is
in place. Every file is fsynced before its rename and its directory after
it (and after removals), so a file counts as exported once it is on disk.
"""

import datetime
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from pgblobs.db.queries import Row
from pgblobs.db.sync import SyncConnection
from pgblobs.ops.files import LINK, RegularFile, UnfitFile
from pgblobs.ops.importfs import DELETED, FLAGS, blob_path
from pgblobs.ops.output import first_line, progress
from pgblobs.ops.reading import each_row, large_object_chunks, live_bytes

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PART = ".part"
_EMPTY = hashlib.sha256().digest()  # a marker's content


@dataclass
class ExportReport:
    exported: int = 0
    tombstones: int = 0
    bytes: int = 0
    skipped: int = 0  # already in the directory
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (blob path, reason)


class UnsafePath(OSError):
    """A directory of a blob's path that export-fs will not enter: a symbolic
    link, or not a directory at all."""


def export_tree(
    connection: SyncConnection, root: str | os.PathLike[str], only_user: str | None = None
) -> ExportReport:
    """Every blob (of ``only_user``, if given) written out below ``root``;
    a blob that cannot be is reported and the rest go on."""
    report = ExportReport()
    total = live_bytes(connection)
    root = Path(root)
    os.makedirs(root, exist_ok=True)
    # DIR itself is the operator's to choose, link or not; nothing below it is followed.
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with progress(total, "exporting") as bar:
            for row in each_row(connection, "export_batch", user=only_user):
                relative = blob_path("", row.user_id, row.namespace, row.blob_id)
                try:
                    _export_one(connection, row, root_fd, root, relative, report)
                except (OSError, psycopg2.Error) as error:
                    report.failed.append((root / relative, first_line(error)))
                if row.deleted_at is None:
                    bar.update(row.size)
    finally:
        os.close(root_fd)
    return report


def _ns(when: datetime.datetime) -> int:
    """A date as file times hold it, exactly (no float on the way)."""
    return (when - _EPOCH) // datetime.timedelta(microseconds=1) * 1000


def _export_one(
    connection: SyncConnection,
    row: Row,
    root_fd: int,
    root: Path,
    relative: Path,
    report: ExportReport,
) -> None:
    with _Directory.enter(root_fd, root, relative.parent.parts) as directory:
        if row.deleted_at is None:
            _export_live(connection, row, directory, report)
        else:
            _export_tombstone(row, directory, report)


def _export_live(
    connection: SyncConnection, row: Row, directory: "_Directory", report: ExportReport
) -> None:
    date = _ns(row.created_at)
    if directory.holds(row.blob_id, row.size, bytes(row.sha256), date):
        report.skipped += 1
    else:
        with connection.transaction(snapshot=True):
            large_object = connection.large_object(row.lo_oid, "rb")
            directory.write(row.blob_id, large_object_chunks(large_object), date)
            large_object.close()
        report.exported += 1
        report.bytes += row.size
    stale = [row.blob_id + DELETED]
    if row.flags:
        flags = json.dumps(list(row.flags)).encode()
        if not directory.holds(row.blob_id + FLAGS, len(flags), hashlib.sha256(flags).digest()):
            directory.write(row.blob_id + FLAGS, [flags])
    else:
        stale.append(row.blob_id + FLAGS)
    directory.remove(stale)


def _export_tombstone(row: Row, directory: "_Directory", report: ExportReport) -> None:
    marker, date = row.blob_id + DELETED, _ns(row.deleted_at)
    if directory.holds(marker, 0, _EMPTY, date):
        report.skipped += 1
    else:
        directory.write(marker, [], date)
        report.tombstones += 1
    directory.remove([row.blob_id, row.blob_id + FLAGS])


class _Directory:
    """A blob's directory in DIR, entered without following links; every
    change made in it is on disk before the call returns."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def enter(cls, root_fd: int, root: Path, components: Iterable[str]) -> "_Directory":
        """The directory ``root/components...``, each made if missing (and its
        parent fsynced), none entered through a link."""
        fd, path = os.dup(root_fd), root
        try:
            for name in components:
                path = path / name
                parent, fd = fd, _enter(fd, name, path)
                os.close(parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def __enter__(self) -> "_Directory":
        return self

    def __exit__(self, *exception: object) -> None:
        os.close(self.fd)

    def holds(self, name: str, size: int, sha256: bytes, date_ns: int | None = None) -> bool:
        """Whether ``name`` is a regular file of this size, sha256 and (when
        given) date; anything else there is stale."""
        try:
            status = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(status.st_mode) or status.st_size != size:
            return False
        if date_ns is not None and status.st_mtime_ns != date_ns:
            return False
        digest = hashlib.sha256()
        try:
            with RegularFile(name, dir_fd=self.fd) as existing:
                for chunk in existing.chunks():
                    digest.update(chunk)
        except UnfitFile:
            return False  # replaced or changed since the stat: rewrite it
        return digest.digest() == sha256

    def write(self, name: str, chunks: Iterable[bytes], date_ns: int | None = None) -> None:
        """``name`` made a file of ``chunks``: written to a new ``.part``,
        fsynced, renamed over ``name``, the directory fsynced."""
        part = name + _PART
        self.remove([part])  # left by an interrupted run, or a link planted there
        fd = os.open(part, _NEW_FILE, 0o666, dir_fd=self.fd)
        try:
            with open(fd, "wb") as target:
                for chunk in chunks:
                    target.write(chunk)
                target.flush()
                if date_ns is not None:
                    os.utime(fd, ns=(date_ns, date_ns))
                os.fsync(fd)
            os.rename(part, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            os.unlink(part, dir_fd=self.fd)
            raise
        os.fsync(self.fd)

    def remove(self, names: Iterable[str]) -> None:
        """Each of ``names`` gone (a link removed, not its target), durably."""
        removed = False
        for name in names:
            try:
                os.unlink(name, dir_fd=self.fd)
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            os.fsync(self.fd)


def _enter(parent_fd: int, name: str, path: Path) -> int:
    """The directory ``name`` in ``parent_fd`` (made when missing), opened
    without following a link."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except FileNotFoundError:
        os.mkdir(name, dir_fd=parent_fd)
        os.fsync(parent_fd)
        return os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except OSError as error:
        if error.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        status = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        reason = LINK if stat.S_ISLNK(status.st_mode) else "not a directory"
        raise UnsafePath(f"{path}: {reason}") from None
