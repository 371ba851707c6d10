"""``pgblobs report usage|daily|large-objects|uploads``: usage reports."""

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from pgblobs import settings
from pgblobs.commands.common import (
    Subcommands,
    byte_limit,
    database_options,
    non_negative,
    with_connection,
)
from pgblobs.db.sync import SyncConnection


@with_connection
def _report(connection: SyncConnection, args: argparse.Namespace) -> None:
    from pgblobs.ops import output, report

    shown: Mapping[str, Callable[[Any], str]]
    if args.report == "usage":
        rows = report.usage(connection, args.quota_bytes, user=args.user, top=args.top)
        columns = report.USAGE_COLUMNS
        shown = dict(report.SIZE_COLUMNS, used_percent=lambda v: "-" if v is None else f"{v}%")
    elif args.report == "daily":
        rows, columns, shown = (
            report.daily(connection, args.days),
            report.DAILY_COLUMNS,
            report.SIZE_COLUMNS,
        )
    elif args.report == "uploads":
        rows, columns, shown = (
            report.uploads(connection),
            report.UPLOADS_COLUMNS,
            report.SIZE_COLUMNS,
        )
    else:
        rows, columns = report.large_objects(connection), report.LARGE_OBJECT_COLUMNS
        shown = dict(report.SIZE_COLUMNS, oids_used_percent=lambda v: f"{v}%")
    print(output.render(rows, columns, args.format, shown))


def configure_parser(commands: Subcommands) -> None:
    report = commands.add_parser("report", help="usage reports").add_subparsers(
        dest="report", required=True, metavar="REPORT"
    )
    usage = report.add_parser(
        "usage", help="usage per user, biggest first, with the uploads in progress"
    )
    usage.add_argument("--user", help="only this user")
    usage.add_argument("--top", type=non_negative, help="only the N biggest users")
    usage.add_argument(
        "--quota-bytes",
        type=byte_limit,
        default=settings.QUOTA_BYTES,
        help="the servers' default quota, for users without an override",
    )
    daily = report.add_parser("daily", help="blobs and bytes written and deleted per day")
    daily.add_argument("--days", type=non_negative, default=30)
    large_objects = report.add_parser(
        "large-objects",
        help="large objects, their bytes on disk, and the OIDs left (a cluster has about 4.29 "
        "billion)",
    )
    uploads = report.add_parser(
        "uploads",
        help="resumable uploads in progress: how many, of how many users, bytes received "
        "and bytes reserved",
    )
    for parser in (usage, daily, large_objects, uploads):
        parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
        database_options(parser)
        parser.set_defaults(run=_report)
