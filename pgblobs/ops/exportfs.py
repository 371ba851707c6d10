"""Writing pgblobs' blobs back out in the Soledad filesystem layout.

The layout is import-fs's (importfs.py): each live blob a file whose mtime
is its date, ``.flags`` beside it when it has flags, a ``.deleted`` marker
(dated when it was deleted) for each tombstone. Contents stream in chunks
from their large objects into ``.part`` files renamed once complete, so a
file that exists is whole: an interrupted export, run again, skips what is
there and carries on.
"""

import json
import os
from dataclasses import dataclass, field

import psycopg2

from pgblobs.ops.importfs import DELETED, FLAGS, blob_path
from pgblobs.ops.output import progress
from pgblobs.transfer import CHUNK

_BATCH = 500  # rows per statement


@dataclass
class ExportReport:
    exported: int = 0
    tombstones: int = 0
    bytes: int = 0
    skipped: int = 0  # already in the directory
    failed: list = field(default_factory=list)  # (blob path, reason)


def export_tree(connection, root, only_user=None):
    report = ExportReport()
    totals = connection.fetch_one("live_totals")
    with progress(int(totals.bytes), "B", "exporting", unit_scale=True) as bar:
        after = 0
        while rows := connection.fetch(
            "export_batch", {"after": after, "user": only_user, "batch": _BATCH}
        ):
            for row in rows:
                path = blob_path(root, row.user_id, row.namespace, row.blob_id)
                try:
                    _export_one(connection, row, path, report)
                except (OSError, psycopg2.Error) as error:
                    report.failed.append((path, str(error).strip().splitlines()[0]))
                if row.deleted_at is None:
                    bar.update(row.size)
            after = rows[-1].id
    return report


def _dated(path, when):
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))


def _export_one(connection, row, path, report):
    path.parent.mkdir(parents=True, exist_ok=True)
    if row.deleted_at is not None:
        marker = path.with_name(row.blob_id + DELETED)
        if marker.exists():
            report.skipped += 1
            return
        marker.touch()
        _dated(marker, row.deleted_at)
        report.tombstones += 1
        return
    if path.exists() and path.stat().st_size == row.size:
        report.skipped += 1
        return
    partial = path.with_name(row.blob_id + ".part")
    with connection.transaction(snapshot=True), open(partial, "wb") as target:
        large_object = connection.large_object(row.lo_oid, "rb")
        while chunk := large_object.read(CHUNK):
            target.write(chunk)
        large_object.close()
    if row.flags:
        path.with_name(row.blob_id + FLAGS).write_text(json.dumps(list(row.flags)))
    _dated(partial, row.created_at)
    partial.rename(path)
    report.exported += 1
    report.bytes += row.size
