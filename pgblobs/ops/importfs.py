"""Moving a Soledad filesystem blob store into pgblobs, and keeping up with it.

The layout (PROTOCOL.md): ``{root}/{user}/{namespace}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}``
holds a blob, ``{that}.flags`` its flags as JSON, ``{that}.deleted`` marks a
tombstone; a file's mtime is the blob's date. Soledad's FilesystemBlobsBackend
writes a blob in place (no temporary file), rewrites ``.flags`` in place, and
deletes by touching ``.deleted`` and unlinking the blob and its ``.flags``; a
later write of the same id leaves the marker, and Soledad serves the blob
again, so a blob file counts as live whatever marker lies beside it.

Every run brings pgblobs level with the tree. Entries go in batches of
``BATCH``: one statement tells what pgblobs holds under the batch's names
(row, size, dates, flags), and each entry is judged against it without
reading any content (``_judge``): a name pgblobs lacks is imported; a blob
whose size and date match its row is unchanged, or has its flags updated
to its ``.flags`` file's;
a marker over a live row makes it a tombstone, its content unlinked as
delete_blob does. Where the two disagree the later one wins, by the file's
mtime (a marker's, its directory's too: ``Entry.deleted_by``) against the
row's date: a blob written again in the tree (or torn by
an earlier run that copied it while Soledad was still writing it) replaces
pgblobs' copy, while a row written or deleted through pgblobs' API after
the tree's version is kept and reported. So a second run over an unchanged
tree changes nothing, and an interrupted run resumes where it stopped.

The batch commits once (one WAL flush for hundreds of blobs); large blobs
stream into large objects inside the same transaction. A batch that fails
(an unreadable file, a row changed through the API meanwhile) is rolled back
and done again one entry at a time, so only the culprit is reported.

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
row changes: held for milliseconds, never while a large file streams. Under
the lock the rows are looked up again; if any changed since they were
judged, the batch is done again.
"""

import dataclasses
import datetime
import enum
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

from pgblobs import names
from pgblobs.db.queries import Row
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
    status: os.stat_result  # lstat while scanning: a marker's date, a blob's size and date
    has_flags: bool = False  # a .flags file lay beside the blob when scanned
    directory_status: os.stat_result | None = None  # a marker's directory, when scanned

    def flags_path(self) -> Path:
        return self.path.with_name(self.key.blob_id + FLAGS)

    @property
    def size(self) -> int:
        return 0 if self.tombstone else self.status.st_size

    @property
    def date(self) -> datetime.datetime:
        return file_date(self.status)

    @property
    def deleted_by(self) -> datetime.datetime:
        """When a marker's blob was deleted at the latest, to weigh against a
        row pgblobs holds. Not the marker's date alone: Soledad touches the
        marker in append mode, which leaves an existing marker's date alone,
        so a blob written again and deleted again keeps its first delete's
        date. Its unlink dates the directory, though, and so does any later
        change there: the later of the two is a time in the source's history
        no earlier than the delete."""
        assert self.tombstone and self.directory_status is not None
        return max(self.date, file_date(self.directory_status))


@dataclass
class ImportReport:
    imported: int = 0  # live blobs written: new, written again after a delete, or replacing
    replaced: int = 0  # of those, ones that replaced an older copy in pgblobs
    tombstones: int = 0  # tombstones of names pgblobs had never held
    tombstoned: int = 0  # live blobs in pgblobs that the tree has deleted since
    flags_updated: int = 0
    unchanged: int = 0
    bytes: int = 0
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (path, why pgblobs' stays)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)

    def merge(self, other: "ImportReport") -> None:
        for each in dataclasses.fields(self):
            setattr(self, each.name, getattr(self, each.name) + getattr(other, each.name))


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
            key = names.BlobKey(user_dir.name, namespace_dir.name, "")
            for directory, files, place in _walk(str(namespace_dir), (), report):
                present = {item.name for item in files}
                # A marker's directory is dated by the delete's unlink (Entry.deleted_by).
                directory_status = None
                if any(name.endswith(DELETED) for name in present):
                    directory_status = os.lstat(directory)
                for item in files:
                    entry = _entry(key, item, place, present, report)
                    if entry is not None:
                        if entry.tombstone:
                            entry.directory_status = directory_status
                        yield entry


def _walk(
    directory: str, place: tuple[str, ...], report: ImportReport
) -> Iterator[tuple[str, list[os.DirEntry[str]], tuple[str, ...]]]:
    """Each real directory at and below ``directory`` (``place``: the names
    leading to it from the namespace's), by name, with the files in it. A
    symbolic link to a directory is reported and never entered; any other
    link is among the files, where its entry (or its blob) fails."""
    with os.scandir(directory) as listing:
        items = sorted(listing, key=lambda item: item.name)
    files, subdirectories = [], []
    for item in items:
        if item.is_symlink() and item.is_dir():
            report.failed.append((Path(item.path), LINK))
        elif item.is_dir(follow_symlinks=False):
            subdirectories.append(item)
        else:
            files.append(item)
    yield directory, files, place
    for subdirectory in subdirectories:
        yield from _walk(subdirectory.path, (*place, subdirectory.name), report)


def _entry(
    directory_key: names.BlobKey,
    item: os.DirEntry[str],
    place: tuple[str, ...],
    present: set[str],
    report: ImportReport,
) -> Entry | None:
    """The entry the file ``item`` stands for (its user and namespace those of
    ``directory_key``, ``place`` the directories between the namespace's and
    it, ``present`` the names beside it), if any; None for a flags file or a
    marker beside its blob (Soledad serves a blob written again after a
    delete), and for a file that fails (in ``report``). A file that vanished
    since the directory was listed (the source deleted it) is no entry: the
    next run sees what replaced it."""
    name = item.name
    if name.endswith(FLAGS):
        return None  # read with its blob
    tombstone = name.endswith(DELETED)
    blob_id = name[: -len(DELETED)] if tombstone else name
    if tombstone and blob_id in present:
        return None  # written again since it was deleted: the blob stands for it
    path = Path(item.path)
    try:
        key = names.BlobKey.of(directory_key.user, blob_id, directory_key.namespace)
    except InvalidName as error:
        report.failed.append((path, str(error)))
        return None
    if place != (blob_id[0], blob_id[:3], blob_id[:6]):
        namespace_dir = path.parents[len(place)]
        expected = blob_path(namespace_dir.parent.parent, key.user, key.namespace, blob_id)
        report.failed.append((path, f"not where the layout puts it ({expected.parent})"))
        return None
    try:
        status = item.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    reason = unfit(status.st_mode)
    if reason is not None:
        report.failed.append((path, reason))
        return None
    return Entry(path, key, tombstone, status, has_flags=blob_id + FLAGS in present)


class _Changed(Exception):
    """A row of the batch changed (through the API) after it was judged."""


class Action(enum.Enum):
    IMPORT = "import"  # a live blob pgblobs lacks (or holds only a tombstone of)
    REPLACE = "replace"  # a live blob pgblobs holds an older copy of
    TOMBSTONE = "tombstone"  # a tombstone of a name pgblobs has never held
    DELETE = "delete"  # a live blob in pgblobs that the tree has deleted since
    FLAGS = "flags"  # the same blob, other flags
    UNCHANGED = "unchanged"
    KEEP = "keep"  # pgblobs' row is later than what the tree says


@dataclass
class _Judgement:
    entry: Entry
    action: Action
    flags: list[str]  # the tree's flags of a live blob
    row: Row | None  # what pgblobs held when judged
    why: str = ""  # for KEEP


def _judge(entry: Entry, flags: list[str], row: Row | None) -> _Judgement:
    """What to do with ``entry`` (whose flags file holds ``flags``) given the
    row pgblobs holds under its name: the later of the two wins, by the
    file's mtime against the row's date; a tie goes to the tree, since a row
    dated exactly as the file came from importing it."""
    date = entry.date

    def judged(action: Action, why: str = "") -> _Judgement:
        return _Judgement(entry, action, flags, row, why)

    if entry.tombstone:
        if row is None:
            return judged(Action.TOMBSTONE)
        if row.deleted_at is not None:
            return judged(Action.UNCHANGED)
        if entry.deleted_by >= row.created_at:
            return judged(Action.DELETE)
        return judged(Action.KEEP, "written in pgblobs after the source deleted it")
    if row is None:
        return judged(Action.IMPORT)
    if row.deleted_at is not None:
        if date >= row.deleted_at:
            return judged(Action.IMPORT)
        return judged(Action.KEEP, "deleted in pgblobs after the source wrote it")
    if (row.size, row.created_at) == (entry.size, date):
        # Without a flags file the source says nothing of flags (Soledad
        # removes one only with its blob), so pgblobs' stand.
        same = not entry.has_flags or list(row.flags) == flags
        return judged(Action.UNCHANGED if same else Action.FLAGS)
    if date >= row.created_at:
        return judged(Action.REPLACE)
    return judged(Action.KEEP, "pgblobs' copy is newer than the source's, and differs")


BATCH = 200  # blobs per transaction


def import_tree(
    connections: Sequence[SyncConnection],
    root: str | os.PathLike[str],
    only_user: str | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """Bring pgblobs level with the tree at ``root``, a batch at a time on
    each of ``connections`` at once."""
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
    except (OSError, ValueError, psycopg2.Error, _Changed):
        outcome = ImportReport()
        for entry in batch:
            _import_alone(connection, entry, outcome, dry_run)
    return outcome


# A blob file the source deleted (or a marker it replaced) between the scan and the read.
_GONE = "gone from the source since the scan (changed meanwhile); the next run takes what is there"


def _import_alone(
    connection: SyncConnection, entry: Entry, report: ImportReport, dry_run: bool
) -> None:
    """One entry in its own transaction, its failure reported as its own."""
    try:
        _import_batch(connection, [entry], report, dry_run)
    except _Changed:
        report.kept.append((entry.path, "changed in pgblobs while imported; run again"))
    except FileNotFoundError:
        report.failed.append((entry.path, _GONE))
    except (OSError, ValueError, psycopg2.Error) as error:
        report.failed.append((entry.path, first_line(error)))


def _arrays(entries: Sequence[Entry], **columns: Sequence[object]) -> dict[str, Sequence[object]]:
    """The parameters of a statement over ``entries``: their names as
    arrays, and each of ``columns`` (a list per entry)."""
    return dict(
        users=[e.key.user for e in entries],
        namespaces=[e.key.namespace for e in entries],
        blob_ids=[e.key.blob_id for e in entries],
        **columns,
    )


def _held(connection: SyncConnection, entries: Sequence[Entry]) -> list[Row | None]:
    """The row pgblobs holds under each entry's name (None: it never held one)."""
    found = {row.position: row for row in connection.fetch("import_state", _arrays(entries))}
    return [found.get(position) for position in range(1, len(entries) + 1)]


def _version(row: Row | None) -> tuple[object, ...] | None:
    """What a row held under a name is, whatever its position in a lookup."""
    if row is None:
        return None
    return (row.id, row.size, row.created_at, row.deleted_at, row.flags)


def _import_batch(
    connection: SyncConnection, batch: Sequence[Entry], report: ImportReport, dry_run: bool
) -> None:
    held = _held(connection, batch)
    # Read before any content is written, and in a dry run too: a bad flags
    # file fails its blob either way.
    judgements = [
        _judge(entry, _read_flags(entry), row) for entry, row in zip(batch, held, strict=True)
    ]
    writes = [j for j in judgements if j.action in (Action.IMPORT, Action.REPLACE)]
    changes = [j for j in judgements if j.action not in (Action.UNCHANGED, Action.KEEP)]
    sizes: list[int] = []
    if dry_run:
        sizes = [_size(j.entry) for j in writes]
    elif changes:
        with connection.transaction():
            contents = [_load(connection, j.entry, j.flags) for j in writes]
            _change_rows(connection, changes, contents)
        sizes = [content.digest.size for content in contents]
    for judgement in judgements:
        _count(report, judgement)
    report.bytes += sum(sizes)


def _count(report: ImportReport, judgement: _Judgement) -> None:
    action = judgement.action
    if action in (Action.IMPORT, Action.REPLACE):
        report.imported += 1
        report.replaced += action is Action.REPLACE
    elif action is Action.TOMBSTONE:
        report.tombstones += 1
    elif action is Action.DELETE:
        report.tombstoned += 1
    elif action is Action.FLAGS:
        report.flags_updated += 1
    elif action is Action.UNCHANGED:
        report.unchanged += 1
    else:
        report.kept.append((judgement.entry.path, judgement.why))


def _size(entry: Entry) -> int:
    """A blob file's size, checked to be a regular file as an import would."""
    with RegularFile(entry.path) as source:
        return source.size


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


def _change_rows(
    connection: SyncConnection, changes: list[_Judgement], contents: list[_Content]
) -> None:
    """The row changes of a batch whose contents are all written, under the
    lock of the users they touch, taken only now so that it is held for these
    statements alone."""
    connection.execute("lock_users", {"users": [j.entry.key.user for j in changes]})
    # The rows were judged before the lock: an API write or delete may have
    # changed one since, and acting on the old judgement would undo it.
    # Under the lock the answer holds until the commit.
    now = _held(connection, [j.entry for j in changes])
    if [_version(row) for row in now] != [_version(j.row) for j in changes]:
        raise _Changed()
    superseded = [
        (j.row.id, j.entry.deleted_by if j.entry.tombstone else j.entry.date)
        for j in changes
        if j.action in (Action.DELETE, Action.REPLACE) and j.row is not None
    ]
    if superseded:
        rows, deleted = zip(*superseded, strict=True)
        connection.execute("import_delete_blobs", {"rows": list(rows), "dates": list(deleted)})
    for judgement in changes:
        if judgement.action is Action.FLAGS:
            connection.execute(
                "set_flags", dict(judgement.entry.key.params(), flags=judgement.flags)
            )
    small = [content for content in contents if content.data is not None]
    if small:
        inline = [psycopg2.Binary(content.data) for content in small]
        connection.execute("import_small_blobs", _content_arrays(small, contents=inline))
    large = [content for content in contents if content.oid is not None]
    if large:
        connection.execute(
            "import_large_blobs",
            _content_arrays(
                large,
                oids=[content.oid for content in large],
                sizes=[content.digest.size for content in large],
            ),
        )
    tombstones = [j.entry for j in changes if j.action is Action.TOMBSTONE]
    if tombstones:
        dates = [entry.date for entry in tombstones]
        connection.execute("import_tombstones", _arrays(tombstones, dates=dates))


def _content_arrays(
    read: list[_Content], **columns: Sequence[object]
) -> dict[str, Sequence[object]]:
    """The parameters of import_small_blobs or import_large_blobs: what every
    blob's row gets, and ``columns`` (its content or its large object)."""
    return _arrays(
        [content.entry for content in read],
        tags=[content.digest.tag for content in read],
        sha256s=[psycopg2.Binary(content.digest.sha256) for content in read],
        dates=[content.created_at for content in read],
        flags=[",".join(content.flags) for content in read],
        **columns,
    )


_FLAGS_LIMIT = 4096  # bytes; four flags in JSON take under 60


def _read_flags(entry: Entry) -> list[str]:
    """The flags in a blob's flags file; none when it has no such file (or
    is a tombstone)."""
    if entry.tombstone or not entry.has_flags:
        return []
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
