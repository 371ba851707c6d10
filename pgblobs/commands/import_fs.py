"""``pgblobs import-fs``: import a Soledad filesystem blob store."""

import argparse
import os

from pgblobs.commands.common import Subcommands, conclude, database_options, dsn, positive
from pgblobs.db.sync import SyncConnection


def _import_fs(args: argparse.Namespace) -> None:
    from pgblobs.ops import importfs, output

    if not os.path.isdir(args.root):
        raise SystemExit(f"pgblobs: {args.root} is not a directory")
    connections = [SyncConnection.connect_at_head(dsn(args)) for _ in range(args.jobs)]
    try:
        report = importfs.import_tree(
            connections, args.root, only_user=args.user, dry_run=args.dry_run
        )
    finally:
        for connection in connections:
            connection.close()
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    verb = "would import" if args.dry_run else "imported"
    conclude(
        f"{verb} {report.imported} blob(s) ({output.human_size(report.bytes)}) and "
        f"{report.tombstones} tombstone(s); skipped {len(report.skipped)}; "
        f"failed {len(report.failed)}",
        report.failed,
    )


def configure_parser(commands: Subcommands) -> None:
    import_fs = commands.add_parser("import-fs", help="import a Soledad filesystem blob store")
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
