"""``pgblobs purge``: remove old tombstones."""

import argparse
from datetime import timedelta

from pgblobs.commands.common import Subcommands, database_options, with_connection
from pgblobs.db.sync import SyncConnection


def _duration(text: str) -> timedelta:
    from pgblobs.ops.purge import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@with_connection
def _purge(connection: SyncConnection, args: argparse.Namespace) -> None:
    from pgblobs.ops import purge

    count = purge.purge(connection, args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {count} tombstone(s) deleted more than {purge.describe(args.older_than)} ago")


def configure_parser(commands: Subcommands) -> None:
    purge = commands.add_parser("purge", help="remove old tombstones")
    purge.add_argument(
        "--older-than", type=_duration, required=True, metavar="DURATION", help="e.g. 30d, 12h, 2w"
    )
    purge.add_argument("--dry-run", action="store_true", help="only count them")
    database_options(purge)
    purge.set_defaults(run=_purge)
