"""``pgblobs export-fs``: write the blobs out in the Soledad filesystem layout."""

import argparse

from pgblobs.commands.common import Subcommands, conclude, database_options, with_connection
from pgblobs.db.sync import SyncConnection


@with_connection
def _export_fs(connection: SyncConnection, args: argparse.Namespace) -> None:
    from pgblobs.ops import exportfs, output

    report = exportfs.export_tree(connection, args.root, only_user=args.user)
    conclude(
        f"exported {report.exported} blob(s) ({output.human_size(report.bytes)}) and "
        f"{report.tombstones} tombstone(s); skipped {report.skipped} already there; "
        f"failed {len(report.failed)}",
        report.failed,
    )


def configure_parser(commands: Subcommands) -> None:
    export_fs = commands.add_parser(
        "export-fs", help="write the blobs out in the Soledad filesystem layout (resumable)"
    )
    export_fs.add_argument("root", help="the directory to write the store into")
    export_fs.add_argument("--user", help="only this user")
    database_options(export_fs)
    export_fs.set_defaults(run=_export_fs)
