"""Consistency between blob rows and large objects, and of content with its digest.

"Ours" means large objects owned by the role fsck connects as: run it as the
role `pgblobs serve` uses, on the database pgblobs has to itself (recommended),
and every such large object that no blob row references is an orphan.
"""
import hashlib
from dataclasses import dataclass, field

import psycopg2

from pgblobs import queries
from pgblobs.largeobjects import CHUNK
from pgblobs.ops.output import progress

_BATCH = 500


@dataclass
class Findings:
    orphans: list = field(default_factory=list)       # large object oids
    broken_rows: list = field(default_factory=list)   # (user, namespace, blob id)
    mismatches: list = field(default_factory=list)    # (user, namespace, blob id, what)
    drifted_usage: list = field(default_factory=list)  # (user, namespace)
    repaired: bool = False

    @property
    def clean(self):
        return not (self.orphans or self.broken_rows or self.mismatches or self.drifted_usage)


def fsck(connection, repair=False, verify_content=False):
    findings = Findings()
    with connection.cursor() as cursor:
        findings.orphans = [oid for (oid,) in queries.execute(
            cursor, "orphan_large_objects", {}).fetchall()]
        broken = queries.execute(cursor, "rows_without_content", {}).fetchall()
    connection.rollback()
    findings.broken_rows = [(user, namespace, blob_id) for _, user, namespace, blob_id in broken]
    if verify_content:
        findings.mismatches = _verify_content(connection)
    if repair and (findings.orphans or broken):
        with connection.cursor() as cursor:
            for oid in findings.orphans:
                queries.execute(cursor, "unlink_large_object", {"oid": oid})
            for row_id, *_ in broken:
                queries.execute(cursor, "bury_row", {"id": row_id})
        connection.commit()
        findings.repaired = True
    # Counted after any repair, which itself moves the counters.
    with connection.cursor() as cursor:
        findings.drifted_usage = queries.execute(cursor, "usage_drift", {}).fetchall()
    connection.rollback()
    if repair and findings.drifted_usage:
        with connection.cursor() as cursor:
            for user, namespace in findings.drifted_usage:
                queries.execute(cursor, "recount_usage", {"user": user, "namespace": namespace})
        connection.commit()
        findings.repaired = True
    return findings


def _verify_content(connection):
    mismatches = []
    with connection.cursor() as cursor:
        count, total_bytes = queries.execute(cursor, "live_totals", {}).fetchone()
    connection.rollback()
    after = 0
    with progress(int(total_bytes), "B", "verifying", unit_scale=True) as bar:
        while True:
            with connection.cursor() as cursor:
                batch = queries.execute(cursor, "live_blobs_for_check",
                                        {"after": after, "batch": _BATCH}).fetchall()
            connection.rollback()
            if not batch:
                return mismatches
            for row_id, user, namespace, blob_id, oid, size, sha256 in batch:
                after = row_id
                problem = _check_one(connection, oid, size, bytes(sha256), bar)
                if problem:
                    mismatches.append((user, namespace, blob_id, problem))


def _check_one(connection, oid, size, sha256, bar):
    """What is wrong with one blob's content, or None."""
    digest, seen = hashlib.sha256(), 0
    try:
        large_object = connection.lobject(oid, "rb")
        while chunk := large_object.read(CHUNK):
            digest.update(chunk)
            seen += len(chunk)
            bar.update(len(chunk))
    except psycopg2.OperationalError:
        connection.rollback()
        return None  # deleted while we looked: not a fault (a missing one is a broken row)
    connection.rollback()
    if seen != size:
        return f"size {seen} where the row says {size}"
    if digest.digest() != sha256:
        return "sha256 differs from the row's"
    return None
