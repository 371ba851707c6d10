"""``pgblobs fsck``: check blob rows against large objects; exit 1 on problems."""

import argparse

from pgblobs.commands.common import Subcommands, database_options, with_connection
from pgblobs.db.sync import SyncConnection


@with_connection
def _fsck(connection: SyncConnection, args: argparse.Namespace) -> None:
    from pgblobs.ops import fsck

    findings = fsck.fsck(connection, repair=args.repair, verify_content=args.verify_content)
    for oid in findings.orphans:
        print(f"orphan large object {oid}: no blob references it")
    for user, namespace, blob_id in findings.broken_rows:
        print(f"blob {user}/{namespace}/{blob_id}: its large object is missing")
    for user, namespace, blob_id, problem in findings.mismatches:
        print(f"blob {user}/{namespace}/{blob_id}: {problem}")
    for user, namespace in findings.drifted_usage:
        print(f"usage counters of {user}/{namespace} differ from its blobs")
    for upload in findings.uploads:
        print(
            f"upload {upload.upload_id} of {upload.user}/{upload.namespace}/{upload.blob_id}: "
            f"{upload.problem}"
        )
    for warning in findings.warnings:
        print(f"warning: {warning}")
    if findings.clean:
        print("clean")
        return
    if findings.repaired:
        print(
            f"repaired: unlinked {len(findings.orphans)} orphan(s), made "
            f"{len(findings.broken_rows)} broken blob(s) tombstones, recounted "
            f"{len(findings.drifted_usage)} usage counter(s), removed "
            f"{len(findings.uploads) - len(findings.held_uploads)} upload(s)"
        )
    for upload_id in findings.held_uploads:
        print(
            f"skipped upload {upload_id}: a PATCH holds it now; run fsck --repair again "
            "once it ends"
        )
    raise SystemExit(1)


def configure_parser(commands: Subcommands) -> None:
    fsck = commands.add_parser(
        "fsck", help="check blob rows against large objects; exit 1 on problems"
    )
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="unlink orphan large objects; make rows without content tombstones; remove "
        "abandoned uploads and those whose content is short (but any a PATCH holds now)",
    )
    fsck.add_argument(
        "--verify-content",
        action="store_true",
        help="re-read every live blob and compare size and sha256",
    )
    database_options(fsck)
    fsck.set_defaults(run=_fsck)
