"""``pgblobs import-fs``: import a Soledad filesystem blob store."""

import argparse
import os
import time
from typing import TYPE_CHECKING

from pgblobs.commands.common import Subcommands, conclude, database_options, dsn, positive
from pgblobs.db.sync import SyncConnection

if TYPE_CHECKING:
    from pgblobs.ops import importfs


DESCRIPTION = """\
Import a Soledad filesystem blob store (FilesystemBlobsBackend's layout), or
bring an earlier import level with it: run it again, and blobs added to the
store since are imported, blobs deleted there (a .deleted marker) become
tombstones (their content removed, as a delete through the API does), and
changed .flags are applied. Nothing else is touched: a blob pgblobs holds
that the store lacks stays. Where the two disagree, the later wins, by the
file's mtime against the row's date: a blob written or deleted through
pgblobs after the store's version is kept and listed ("kept PATH: why").
A run reads no content it does not import, so one over an unchanged store
changes nothing and is quick; it may run while Soledad and pgblobs serve.

The last line counts each kind: imported (of which replacing an older
copy), tombstones of names new to pgblobs, tombstoned (deleted in the store
since), flags updated, unchanged, kept, failed. Each failure is listed on
stderr, and any makes the exit status 1.
"""


def _import_fs(args: argparse.Namespace) -> None:
    from pgblobs.ops import importfs

    if not os.path.isdir(args.root):
        raise SystemExit(f"pgblobs: {args.root} is not a directory")
    connections = [SyncConnection.connect_at_head(dsn(args)) for _ in range(args.jobs)]
    started = time.monotonic()
    try:
        report = importfs.import_tree(
            connections, args.root, only_user=args.user, dry_run=args.dry_run
        )
    finally:
        for connection in connections:
            connection.close()
    for path, reason in report.kept:
        print(f"kept {path}: {reason}")
    seconds = time.monotonic() - started
    conclude(_summary(report, args.dry_run, seconds), report.failed)


def _summary(report: "importfs.ImportReport", dry_run: bool, seconds: float) -> str:
    """What a run did (or, in a dry run, would do), one count per kind, and
    how long it took."""
    from pgblobs.ops import output

    verb = "would import" if dry_run else "imported"
    return (
        f"{verb} {report.imported} blob(s) ({output.human_size(report.bytes)}, "
        f"{report.replaced} replacing an older copy) and {report.tombstones} tombstone(s); "
        f"tombstoned {report.tombstoned}; flags updated {report.flags_updated}; "
        f"unchanged {report.unchanged}; kept {len(report.kept)}; failed {len(report.failed)}; "
        f"in {seconds:.1f} s"
    )


def configure_parser(commands: Subcommands) -> None:
    import_fs = commands.add_parser(
        "import-fs",
        help="import a Soledad filesystem blob store, or catch up with it",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    import_fs.add_argument("root", help="the store's root directory")
    import_fs.add_argument("--user", help="only this user")
    import_fs.add_argument("--dry-run", action="store_true", help="report, change nothing")
    import_fs.add_argument(
        "--jobs",
        type=positive,
        default=2,
        help="batches imported at once, each on its own connection (default: %(default)s)",
    )
    database_options(import_fs)
    import_fs.set_defaults(run=_import_fs)
