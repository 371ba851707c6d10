"""Consistency between blob rows and large objects, and of content with its digest.

"Ours" means large objects owned by the role fsck connects as: run it as the
role `pgblobs serve` uses, on the database pgblobs has to itself (recommended),
and every such large object that no blob row references is an orphan.
"""

import hashlib
from dataclasses import dataclass, field

import psycopg2

from pgblobs.ops import capacity
from pgblobs.ops.output import progress
from pgblobs.transfer import CHUNK

_BATCH = 500


@dataclass
class Findings:
    orphans: list = field(default_factory=list)  # large object oids
    broken_rows: list = field(default_factory=list)  # (user, namespace, blob id)
    mismatches: list = field(default_factory=list)  # (user, namespace, blob id, what)
    drifted_usage: list = field(default_factory=list)  # (user, namespace)
    warnings: list = field(default_factory=list)  # nothing wrong yet, but soon
    repaired: bool = False

    @property
    def clean(self):
        return not (self.orphans or self.broken_rows or self.mismatches or self.drifted_usage)


def fsck(connection, repair=False, verify_content=False):
    findings = Findings()
    headroom = capacity.measure(connection).warning
    if headroom is not None:
        findings.warnings.append(headroom)
    findings.orphans = [row.oid for row in connection.fetch("orphan_large_objects")]
    broken = connection.fetch("rows_without_content")
    findings.broken_rows = [(row.user_id, row.namespace, row.blob_id) for row in broken]
    if verify_content:
        findings.mismatches = _verify_content(connection)
    if repair and (findings.orphans or broken):
        with connection.transaction():
            for oid in findings.orphans:
                connection.fetch("unlink_large_object", {"oid": oid})
            for row in broken:
                connection.execute("bury_row", {"id": row.id})
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


def _verify_content(connection):
    mismatches: list[tuple[str, str, str, str]] = []
    total_bytes = connection.fetch_one("live_totals").bytes
    after = 0
    with progress(int(total_bytes), "B", "verifying", unit_scale=True) as bar:
        while True:
            batch = connection.fetch("live_blobs_for_check", {"after": after, "batch": _BATCH})
            if not batch:
                return mismatches
            for row in batch:
                after = row.id
                problem = _check_one(connection, row.lo_oid, row.size, bytes(row.sha256), bar)
                if problem:
                    mismatches.append((row.user_id, row.namespace, row.blob_id, problem))


def _check_one(connection, oid, size, sha256, bar):
    """What is wrong with one blob's content, or None."""
    digest, seen = hashlib.sha256(), 0
    try:
        with connection.transaction(commit=False):
            large_object = connection.large_object(oid, "rb")
            while chunk := large_object.read(CHUNK):
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
