"""Consistency between blob rows and large objects, and of content with its digest.

"Ours" means large objects owned by the role fsck connects as: run it as the
role `pgblobs serve` uses, on the database pgblobs has to itself (recommended),
and every such large object that no blob row and no upload in progress
references is an orphan.
"""

import hashlib
from dataclasses import dataclass, field

import psycopg2
from tqdm import tqdm

from pgblobs.db.sync import SyncConnection
from pgblobs.ops import capacity
from pgblobs.ops.output import progress
from pgblobs.ops.reading import each_row, large_object_chunks, live_bytes

# Every node sweeps expired uploads each second: one expired for longer than
# this was left behind (no node is running, or none can reach the database).
ABANDONED_AFTER = 60.0


@dataclass(frozen=True)
class BrokenUpload:
    """An upload in progress that fsck reports: abandoned, or its content short."""

    upload_id: str
    user: str
    namespace: str
    blob_id: str
    problem: str


@dataclass
class Findings:
    orphans: list[int] = field(default_factory=list)  # large object oids
    # (user, namespace, blob id)
    broken_rows: list[tuple[str, str, str]] = field(default_factory=list)
    # (user, namespace, blob id, what)
    mismatches: list[tuple[str, str, str, str]] = field(default_factory=list)
    drifted_usage: list[tuple[str, str]] = field(default_factory=list)  # (user, namespace)
    uploads: list[BrokenUpload] = field(default_factory=list)
    # Of those, the ones --repair left because a PATCH held them (it runs on).
    held_uploads: list[str] = field(default_factory=list)  # upload ids
    warnings: list[str] = field(default_factory=list)  # nothing wrong yet, but soon
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not (
            self.orphans
            or self.broken_rows
            or self.mismatches
            or self.drifted_usage
            or self.uploads
        )


def fsck(
    connection: SyncConnection, repair: bool = False, verify_content: bool = False
) -> Findings:
    """What is inconsistent (and, with ``verify_content``, which contents
    differ from their rows); with ``repair``, the orphans, broken rows and
    abandoned or broken uploads removed and drifted usage recounted."""
    findings = Findings()
    headroom = capacity.measure(connection).warning
    if headroom is not None:
        findings.warnings.append(headroom)
    findings.orphans = [row.oid for row in connection.fetch("orphan_large_objects")]
    broken = connection.fetch("rows_without_content")
    findings.broken_rows = [(row.user_id, row.namespace, row.blob_id) for row in broken]
    findings.uploads = _check_uploads(connection)
    if verify_content:
        findings.mismatches = _verify_content(connection)
    if repair and (findings.orphans or broken):
        with connection.transaction():
            for oid in findings.orphans:
                connection.fetch("unlink_large_object", {"oid": oid})
            for row in broken:
                connection.execute("bury_row", {"id": row.id})
        findings.repaired = True
    if repair and findings.uploads:
        doomed = [upload.upload_id for upload in findings.uploads]
        ended = set(connection.fetch("end_uploads", {"upload_ids": doomed})[0].ended)
        findings.held_uploads = [upload_id for upload_id in doomed if upload_id not in ended]
        findings.repaired = True
    # Counted after any repair, which itself moves the counters.
    findings.drifted_usage = [
        (row.user_id, row.namespace) for row in connection.fetch("usage_drift")
    ]
    if repair and findings.drifted_usage:
        with connection.transaction():
            for user, namespace in findings.drifted_usage:
                connection.execute("recount_usage", {"user": user, "namespace": namespace})
        findings.repaired = True
    return findings


def _check_uploads(connection: SyncConnection) -> list[BrokenUpload]:
    found = []
    for row in connection.fetch("uploads_for_check", {"grace": ABANDONED_AFTER}):
        if row.stored is None:
            problem = "its large object is missing"
        elif row.stored < row.upload_offset:
            problem = (
                f"its large object holds {row.stored} bytes where the row says "
                f"{row.upload_offset} were received"
            )
        else:
            problem = (
                f"abandoned: it expired at {row.expires_at.isoformat(timespec='seconds')} "
                "and no node removed it"
            )
        found.append(BrokenUpload(row.upload_id, row.user_id, row.namespace, row.blob_id, problem))
    return found


def _verify_content(connection: SyncConnection) -> list[tuple[str, str, str, str]]:
    mismatches: list[tuple[str, str, str, str]] = []
    with progress(live_bytes(connection), "verifying") as bar:
        for row in each_row(connection, "live_blobs_for_check"):
            problem = _check_one(connection, row.lo_oid, row.size, bytes(row.sha256), bar)
            if problem:
                mismatches.append((row.user_id, row.namespace, row.blob_id, problem))
    return mismatches


def _check_one(
    connection: SyncConnection, oid: int, size: int, sha256: bytes, bar: tqdm
) -> str | None:
    """What is wrong with one blob's content, or None."""
    digest, seen = hashlib.sha256(), 0
    try:
        with connection.transaction(commit=False):
            for chunk in large_object_chunks(connection.large_object(oid, "rb")):
                digest.update(chunk)
                seen += len(chunk)
                bar.update(len(chunk))
    except psycopg2.OperationalError:
        return None  # deleted while we looked: not a fault (a missing one is a broken row)
    if seen != size:
        return f"size {seen} where the row says {size}"
    if digest.digest() != sha256:
        return "sha256 differs from the row's"
    return None
