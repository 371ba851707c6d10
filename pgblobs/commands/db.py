"""``pgblobs db upgrade``: bring the schema to the newest revision."""

import argparse

from pgblobs.commands.common import Subcommands, database_options, dsn
from pgblobs.db import schema


def _db_upgrade(args: argparse.Namespace) -> None:
    print(f"database is at revision {schema.upgrade(dsn(args), args.revision)}")


def configure_parser(commands: Subcommands) -> None:
    db = commands.add_parser("db", help="the database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    upgrade = db.add_parser("upgrade", help="bring the schema to the newest revision")
    database_options(upgrade)
    upgrade.add_argument(
        "--revision",
        default="head",
        help="stop at this revision, e.g. one release at a time while older nodes are still "
        "connected (default: %(default)s)",
    )
    upgrade.set_defaults(run=_db_upgrade)
