"""Moving a Soledad filesystem blob store into pgblobs.

The layout (PROTOCOL.md): ``{root}/{user}/{namespace}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}``
holds a blob, ``{that}.flags`` its flags as JSON, ``{that}.deleted`` marks a
tombstone; a file's mtime is the blob's date.

Blobs go in batches of ``BATCH``: one statement finds what pgblobs holds
under the batch's names (live row with size, date and flags; tombstone), and
each entry is compared with it by the file's size and mtime and its flags
file, never its bytes, so a run over an unchanged tree reads no content and
writes nothing. What differs is brought level with the source in one
transaction per batch (one WAL flush for hundreds of blobs): new blobs and
tombstones are inserted (small contents inline, large ones streamed into
large objects), a live blob whose marker has appeared since is deleted as
the API deletes it (``delete_blob``: tombstone, flags dropped, content
unlinked), flags that differ from a flags file are set as the API sets
them, and a live blob whose file is newer than its row (a copy taken while
Soledad was still writing it) is replaced by the file. Where pgblobs is the
newer side (a blob written or deleted through its API after the import),
pgblobs' copy stays and the run says so. An interrupted run resumes: what
its committed batches did now compares equal. A batch that fails (an
unreadable file, a name changed through the API meanwhile) is rolled back
and done again one blob at a time, so only the culprit is reported.

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
row changes, after checking that the rows are still as compared: held for
milliseconds, never while a large file streams.
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
    imported: int = 0  # blobs new to pgblobs
    tombstones: int = 0  # tombstones new to pgblobs
    replaced: int = 0  # live blobs whose source file is newer: its content replaced them
    deleted: int = 0  # live blobs deleted in the source since: now tombstones
    reflagged: int = 0  # live blobs whose flags changed in the source
    unchanged: int = 0
    bytes: int = 0  # of the contents read (imported and replaced)
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (path, why pgblobs' stays)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)

    def merge(self, other: "ImportReport") -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


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


class _Raced(Exception):
    """What pgblobs holds under a name of the batch changed while the batch
    was read (a write through the API, most likely)."""


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
    except (OSError, ValueError, psycopg2.Error, _Raced):
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


@dataclass(frozen=True)
class _Held:
    """What pgblobs holds under one name (a row of import_states)."""

    live_row: int | None
    size: int | None
    created_at: datetime.datetime | None
    flags: tuple[str, ...]
    has_tombstone: bool


def _holdings(connection: SyncConnection, entries: Sequence[Entry]) -> dict[int, _Held]:
    """What pgblobs holds under the names of ``entries``, by position (from
    0); a name without any row is absent."""
    return {
        row.position - 1: _Held(
            row.live_row, row.size, row.created_at, tuple(row.flags or ()), row.has_tombstone
        )
        for row in connection.fetch("import_states", _arrays(entries))
    }


@dataclass
class _Plan:
    """What a batch does, entry by entry, decided from the files' metadata
    and the rows' (no content is read to decide)."""

    new: list[Entry] = field(default_factory=list)  # no row yet: imported as they are
    replaced: list[tuple[Entry, int]] = field(default_factory=list)  # (entry, live row)
    deleted: list[Entry] = field(default_factory=list)  # live here, deleted in the source
    reflagged: list[tuple[Entry, list[str]]] = field(default_factory=list)
    unchanged: int = 0
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (path, why pgblobs' stays)
    flags: dict[Path, list[str] | None] = field(default_factory=dict)  # by entry.path

    @property
    def changes(self) -> bool:
        return bool(self.new or self.replaced or self.deleted or self.reflagged)

    def flags_of(self, entry: Entry) -> list[str]:
        """The flags a blob gets when its row is written: its flags file's, or none."""
        return self.flags.get(entry.path) or []


NEWER_HERE = "pgblobs' copy is newer than the source's (written through the API): kept"
DELETED_HERE = "deleted through pgblobs' API, live in the source: kept deleted"


def _plan(batch: Sequence[Entry], held: dict[int, _Held]) -> _Plan:
    """Compare each entry with what pgblobs holds under its name. The newer
    side wins where they differ: a source file newer than the live row
    replaces it (a copy taken while Soledad wrote it, most likely), a live
    row newer than the file (an API write after the import) stays, and so
    does a tombstone made through the API. A flags file, when there is one,
    says what the flags are; without one the source says nothing about them."""
    plan = _Plan()
    for position, entry in enumerate(batch):
        state = held.get(position)
        if not entry.tombstone:
            plan.flags[entry.path] = _read_flags(entry)
        if state is None:
            plan.new.append(entry)
        elif entry.tombstone:
            if state.live_row is None:
                plan.unchanged += 1
            elif file_date(entry.status) >= _date(state):
                plan.deleted.append(entry)
            else:
                plan.kept.append((entry.path, NEWER_HERE))
        elif state.live_row is None:
            plan.kept.append((entry.path, DELETED_HERE))
        elif (entry.status.st_size, file_date(entry.status)) != (state.size, state.created_at):
            if file_date(entry.status) > _date(state):
                plan.replaced.append((entry, state.live_row))
            else:
                plan.kept.append((entry.path, NEWER_HERE))
        else:
            flags = plan.flags[entry.path]
            if flags is not None and tuple(flags) != state.flags:
                plan.reflagged.append((entry, flags))
            else:
                plan.unchanged += 1
    return plan


def _date(state: _Held) -> datetime.datetime:
    assert state.created_at is not None  # a live row has a date
    return state.created_at


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
    held = _holdings(connection, batch)
    # Flags files are read while planning, in a dry run too: a bad one fails
    # its blob either way.
    plan = _plan(batch, held)
    written = [entry for entry in plan.new if not entry.tombstone]
    written += [entry for entry, _ in plan.replaced]
    sizes: list[int] = []
    if dry_run:
        sizes = [_size(entry) for entry in written]
    elif plan.changes:
        with connection.transaction():
            contents = [_load(connection, entry, plan.flags_of(entry)) for entry in written]
            _apply(connection, batch, held, plan, contents)
        sizes = [content.digest.size for content in contents]
    report.imported += len(written) - len(plan.replaced)
    report.replaced += len(plan.replaced)
    report.tombstones += sum(entry.tombstone for entry in plan.new)
    report.deleted += len(plan.deleted)
    report.reflagged += len(plan.reflagged)
    report.unchanged += plan.unchanged
    report.kept += plan.kept
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


def _apply(
    connection: SyncConnection,
    batch: Sequence[Entry],
    held: dict[int, _Held],
    plan: _Plan,
    contents: list[_Content],
) -> None:
    """A batch's row changes, its new contents all written, under its users'
    lock, taken only now so that it is held for these changes alone."""
    connection.execute("lock_users", {"users": [entry.key.user for entry in batch]})
    # The plan was made before the lock: an API write (a delete, a flag) may
    # have changed a name since, and acting on the old state would revive
    # or double it. Under the lock the answer holds until the commit.
    if _holdings(connection, batch) != held:
        raise _Raced()
    for _, row in plan.replaced:
        connection.execute("import_drop_version", {"row": row})
    for entry in plan.deleted:
        connection.execute("delete_blob", entry.key.params())
    for entry, flags in plan.reflagged:
        connection.execute("set_flags", dict(entry.key.params(), flags=flags))
    try:
        for content in contents:
            if content.oid is not None:
                _insert_large(connection, content, content.oid)
        small = [content for content in contents if content.data is not None]
        if small:
            _insert_small(connection, small)
        tombstones = [entry for entry in plan.new if entry.tombstone]
        if tombstones:
            dates = [file_date(entry.status) for entry in tombstones]
            connection.execute("import_tombstones", _arrays(tombstones, dates=dates))
    except psycopg2.IntegrityError as error:
        if error.pgcode == errorcodes.UNIQUE_VIOLATION:
            raise _Raced() from None
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
    """One entry in its own transaction, its failure reported as its own. A
    blob deleted in the source since the scan (Soledad serving) is taken as
    the tombstone its marker now says it is."""
    try:
        _import_batch(connection, [entry], report, dry_run)
    except _Raced:
        report.kept.append((entry.path, "changed through the API meanwhile: kept"))
    except FileNotFoundError as error:
        marker = _marker_since(entry)
        if marker is None:
            report.failed.append((entry.path, first_line(error)))
        else:
            _import_alone(connection, marker, report, dry_run)
    except (OSError, ValueError, psycopg2.Error) as error:
        report.failed.append((entry.path, first_line(error)))


def _marker_since(entry: Entry) -> Entry | None:
    """The tombstone entry of a blob whose file is gone, if its ``.deleted``
    marker is there now (a regular file); None otherwise."""
    if entry.tombstone:
        return None
    marker = entry.path.with_name(entry.key.blob_id + DELETED)
    try:
        status = os.lstat(marker)
    except FileNotFoundError:
        return None
    if unfit(status.st_mode) is not None:
        return None
    return Entry(marker, entry.key, True, status)


_FLAGS_LIMIT = 4096  # bytes; four flags in JSON take under 60


def _read_flags(entry: Entry) -> list[str] | None:
    """The flags in a blob's flags file; None when it has no such file."""
    path = entry.flags_path()
    try:
        with RegularFile(path) as source:
            if source.size > _FLAGS_LIMIT:
                raise UnfitFile(f"{source.size} bytes, too large")
            text = b"".join(source.chunks())
    except FileNotFoundError:
        return None
    except UnfitFile as error:
        raise UnfitFile(f"its flags file {path.name}: {error}") from None
    try:
        return names.flag_list(json.loads(text))
    except (ValueError, InvalidFlag) as error:
        raise ValueError(f"bad flags file {path.name}: {error}") from None
