"""The ``pgblobs`` command: thin argument parsing over the package's rooms."""
import argparse
import os
import sys

import psycopg2
import sqlalchemy.exc

from pgblobs import schema


def _add_dsn(parser):
    parser.add_argument(
        "--dsn", default=os.environ.get("PGBLOBS_DSN"),
        help="libpq connection string or URL (default: $PGBLOBS_DSN)")


def _require_dsn(args):
    if not args.dsn:
        raise SystemExit("pgblobs: no database given: pass --dsn or set PGBLOBS_DSN")
    return args.dsn


def _db_upgrade(args):
    schema.upgrade(_require_dsn(args), args.revision)
    print(f"database is at revision {args.revision}")


def build_parser():
    parser = argparse.ArgumentParser(prog="pgblobs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True)
    upgrade = db.add_parser("upgrade", help="bring the database schema to the newest revision")
    _add_dsn(upgrade)
    upgrade.add_argument("--revision", default="head", help=argparse.SUPPRESS)
    upgrade.set_defaults(run=_db_upgrade)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (psycopg2.Error, sqlalchemy.exc.DBAPIError) as error:
        message = str(getattr(error, "orig", None) or error).strip()
        raise SystemExit(f"pgblobs: database error: {message}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
