"""The ``pgblobs`` command: argument parsing over the package's rooms.

Each command is a few lines that call the backend, the accounts or the
schema module; errors come back as one readable line and a non-zero exit.
"""

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import psycopg2
import sqlalchemy.exc
from twisted.internet import defer, task

from pgblobs import accounts, settings
from pgblobs.cluster import ClusterFailed, LocalCluster, PostgresNotFound
from pgblobs.db import schema
from pgblobs.db.connector import SyncConnection
from pgblobs.errors import BlobsError
from pgblobs.web.site import Limits

_FAILURES = (
    psycopg2.Error,
    sqlalchemy.exc.DBAPIError,
    BlobsError,
    ValueError,
    ClusterFailed,
    PostgresNotFound,
)


def _message(error):
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        error = error.orig
    if isinstance(error, psycopg2.Error):
        return "database error: " + str(error).strip().splitlines()[0]
    return str(error)


def _database_options(parser):
    parser.add_argument(
        "--dsn",
        default=settings.dsn_from_environment(),
        help=f"libpq connection string or URL (default: ${settings.DSN_VARIABLE}, else the "
        "embedded database of `pgblobs serve` if it is running)",
    )
    parser.add_argument(
        "--data-dir",
        default=settings.DATA_DIR,
        help=f"the embedded database's directory (default: {settings.DATA_DIR})",
    )


def _dsn(args):
    if args.dsn:
        return args.dsn
    embedded = LocalCluster(args.data_dir)
    if embedded.is_running():
        return embedded.dsn
    raise SystemExit(
        f"pgblobs: no database given: pass --dsn, set {settings.DSN_VARIABLE}, "
        "or start `pgblobs serve` (`make run`) for the embedded one"
    )


def _react(main):
    """Run the coroutine function ``main()`` under the reactor; a failure it
    raises becomes one readable line and exit status 1."""

    async def guarded(reactor):
        try:
            await main()
        except _FAILURES as error:
            raise SystemExit(f"pgblobs: {_message(error)}") from None

    task.react(lambda reactor: defer.ensureDeferred(guarded(reactor)))


def _with_connection(work):
    """Run ``work(connection, args)`` on a SyncConnection to a schema at head."""

    def command(args):
        connection = SyncConnection.connect_at_head(_dsn(args))
        try:
            return work(connection, args)
        finally:
            connection.close()

    return command


def _token_commands(create, revoke, holder):
    """The create and revoke commands of one kind of token (users', services')."""

    @_with_connection
    def create_command(connection, args):
        print(create(connection, args.holder))

    @_with_connection
    def revoke_command(connection, args):
        revoked = revoke(connection, args.holder)
        print(f"revoked {revoked} token(s) of {holder} {args.holder}")

    return create_command, revoke_command


def _limit(text, unit):
    """A number of ``unit``, or 'unlimited' (None)."""
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of {unit} or 'unlimited'"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError("a quota cannot be negative")
    return value


def _byte_limit(text):
    return _limit(text, "bytes")


def _blob_limit(text):
    return _limit(text, "blobs")


def _quota_setting(text):
    """What `quota set` accepts: a byte limit, or 'default' to drop the override."""
    if text.lower() == "default":
        return "default"
    return _byte_limit(text)


@_with_connection
def _quota_set(connection, args):
    if args.bytes == "default":
        accounts.clear_quota(connection, args.user)
        print(f"{args.user}: the server's default quota applies")
    else:
        accounts.set_quota(connection, args.user, args.bytes)
        limit = "unlimited" if args.bytes is None else f"{args.bytes} bytes"
        print(f"{args.user}: quota {limit}")


@_with_connection
def _quota_show(connection, args):
    has_override, quota_bytes, used = accounts.quota(connection, args.user)
    if not has_override:
        limit = "server default"
    elif quota_bytes is None:
        limit = "unlimited"
    else:
        limit = f"{quota_bytes} bytes"
    print(f"{args.user}: quota {limit}, {used} bytes used")


@_with_connection
def _report(connection, args):
    from pgblobs.ops import output, report

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
    else:
        rows, columns = report.large_objects(connection), report.LARGE_OBJECT_COLUMNS
        shown = dict(report.SIZE_COLUMNS, oids_used_percent=lambda v: f"{v}%")
    print(output.render(rows, columns, args.format, shown))


@_with_connection
def _purge(connection, args):
    from pgblobs.ops import purge

    count = purge.purge(connection, args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {count} tombstone(s) deleted more than {purge.describe(args.older_than)} ago")


@_with_connection
def _fsck(connection, args):
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
    for warning in findings.warnings:
        print(f"warning: {warning}")
    if findings.clean:
        print("clean")
        return
    if findings.repaired:
        print(
            f"repaired: unlinked {len(findings.orphans)} orphan(s), made "
            f"{len(findings.broken_rows)} broken blob(s) tombstones, recounted "
            f"{len(findings.drifted_usage)} usage counter(s)"
        )
    raise SystemExit(1)


@_with_connection
def _export_fs(connection, args):
    from pgblobs.ops import exportfs, output

    report = exportfs.export_tree(connection, args.root, only_user=args.user)
    for path, reason in report.failed:
        print(f"failed {path}: {reason}", file=sys.stderr)
    print(
        f"exported {report.exported} blob(s) ({output.human_size(report.bytes)}) and "
        f"{report.tombstones} tombstone(s); skipped {report.skipped} already there; "
        f"failed {len(report.failed)}"
    )
    if report.failed:
        raise SystemExit(1)


def _import_fs(args):
    from pgblobs.ops import importfs, output

    if not os.path.isdir(args.root):
        raise SystemExit(f"pgblobs: {args.root} is not a directory")
    connections = [SyncConnection.connect_at_head(_dsn(args)) for _ in range(args.jobs)]
    try:
        report = importfs.import_tree(
            connections, args.root, only_user=args.user, dry_run=args.dry_run
        )
    finally:
        for connection in connections:
            connection.close()
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    for path, reason in report.failed:
        print(f"failed {path}: {reason}", file=sys.stderr)
    verb = "would import" if args.dry_run else "imported"
    print(
        f"{verb} {report.imported} blob(s) ({output.human_size(report.bytes)}) and "
        f"{report.tombstones} tombstone(s); skipped {len(report.skipped)}; "
        f"failed {len(report.failed)}"
    )
    if report.failed:
        raise SystemExit(1)


def _duration(text):
    from pgblobs.ops.purge import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _db_upgrade(args):
    print(f"database is at revision {schema.upgrade(_dsn(args), args.revision)}")


def _serve(args):
    from pgblobs import serve

    options = serve.ServeOptions(
        dsn=args.dsn,
        listen=args.listen or [serve.DEFAULT_LISTEN],
        services_listen=args.services_listen or [],
        data_dir=args.data_dir,
        backend=serve.BackendOptions(
            quota_bytes=args.quota_bytes,
            quota_blobs=args.quota_blobs,
            pool_size=args.pool_size,
            max_waiting=args.max_waiting,
            statement_timeout=args.statement_timeout,
            max_transfers_per_user=args.max_transfers_per_user,
            max_buffered_bytes=args.max_buffered_bytes,
            replica_dsn=args.replica_dsn or [],
            replica_max_lag=args.replica_max_lag,
        ),
        limits=Limits(
            max_blob_bytes=args.max_blob_bytes,
            max_json_bytes=args.max_json_bytes,
            max_stream_ids=args.max_stream_ids,
            idle_timeout=args.idle_timeout,
            header_timeout=args.header_timeout,
            min_upload_rate=args.min_upload_rate,
            upload_rate_window=args.upload_rate_window,
            max_connections=args.max_connections,
            max_services_connections=args.max_services_connections,
        ),
        drain_seconds=args.drain_seconds,
        token_cache_seconds=args.token_cache_seconds,
        workers=args.workers,
        log_format=args.log_format,
        access_log=args.access_log,
    )
    serve.start_logging(args.log_format)
    from twisted.internet import reactor

    _react(lambda: serve.run(reactor, options))


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _non_negative_seconds(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _worker_count(text):
    if text == "auto":
        return os.cpu_count() or 1
    return _positive(text)


def _blob_size_limit(text):
    value = _non_negative(text)
    if value > Limits.max_blob_bytes:
        raise argparse.ArgumentTypeError(
            f"at most {Limits.max_blob_bytes}: a stream download gives sizes in 8 hex digits"
        )
    return value


def _user_command(commands, name, help_text, run):
    """A subcommand taking a USER and the database options."""
    command = commands.add_parser(name, help=help_text)
    command.add_argument("user")
    _database_options(command)
    command.set_defaults(run=run)
    return command


# `pgblobs serve`'s sizes and times: (option, type, default, help).
_SERVE_LIMITS: list[tuple[str, Callable[[str], Any], Any, str]] = [
    ("--quota-bytes", _byte_limit, settings.QUOTA_BYTES,
     "default quota per user in bytes, or 'unlimited' (default: %(default)s)"),
    ("--quota-blobs", _blob_limit, settings.QUOTA_BLOBS,
     "live blobs each user may keep, or 'unlimited'; past it writes get 507 (default: "
     "%(default)s)"),
    ("--pool-size", int, settings.POOL_SIZE,
     "database connections per pool (default: %(default)s)"),
    ("--max-waiting", _non_negative, None,
     "transfers that may wait for a busy content pool before 503s (default: "
     f"{settings.WAITING_PER_CONNECTION} x pool; statements may wait 10 times as many)"),
    ("--statement-timeout", float, settings.STATEMENT_TIMEOUT,
     "seconds any one SQL statement may run; one the database has not answered "
     f"{settings.STATEMENT_DEADLINE_MARGIN:g} s later (a silent link) fails with 503 and its "
     "connection is replaced; 0: no limit (default: %(default)s)"),
    ("--token-cache-seconds", _non_negative_seconds, settings.TOKEN_CACHE_SECONDS,
     "seconds a node may remember a valid token after the database last confirmed it "
     "(revocations are heard at once through LISTEN, and a silent listener is noticed within "
     "seconds; this bounds the rest); 0: ask every time (default: %(default)s)"),
    ("--max-transfers-per-user", _positive, None,
     "large reads and writes one user may run at once; more wait their turn, so one "
     "user's stalled transfers never hold every content connection (default: half of "
     "--pool-size)"),
    ("--max-buffered-bytes", _non_negative, settings.MAX_BUFFERED_BYTES,
     "bytes of small upload bodies gathered in memory at once; past it, small uploads "
     "stream like large ones (default: %(default)s)"),
    ("--max-blob-bytes", _blob_size_limit, Limits.max_blob_bytes,
     "largest blob accepted (default and most: %(default)s, what a stream download's size "
     "field can carry)"),
    ("--max-json-bytes", _non_negative, Limits.max_json_bytes,
     "largest flag list or stream listing (default: %(default)s)"),
    ("--max-stream-ids", _positive, Limits.max_stream_ids,
     "blobs one stream download or upload may carry; more is a 413 (default: %(default)s)"),
    ("--idle-timeout", float, Limits.idle_timeout,
     "seconds a connection may keep the server waiting: silent between requests, or not "
     "sending a body or not reading an answer (default: %(default)s)"),
    ("--header-timeout", float, Limits.header_timeout,
     "seconds from accepting a connection (or ending a response) to the last header of "
     "its request (default: %(default)s)"),
    ("--min-upload-rate", _non_negative, Limits.min_upload_rate,
     "bytes per second a request body must keep up, over each --upload-rate-window, while "
     "the server reads it; a slower one is cut with 408, so clients that trickle cannot "
     "hold database connections; 0: no floor (default: %(default)s)"),
    ("--upload-rate-window", _positive_float, Limits.upload_rate_window,
     "seconds over which --min-upload-rate is measured; time the server itself keeps a "
     "body waiting does not count (default: %(default)s)"),
    ("--max-connections", _positive, settings.max_connections(),
     "client connections each process (each worker) keeps open on the public listeners; "
     "past it a new connection is answered 503 with Retry-After and closed, and those "
     "connected are served as before (default: the descriptor limit, ulimit -n, less "
     f"{settings.DESCRIPTOR_RESERVE} for database connections and files: %(default)s here)"),
    ("--max-services-connections", _positive, settings.MAX_SERVICES_CONNECTIONS,
     "the same for the services listeners, counted apart so that a flood of the public "
     "listener never refuses an MX (default: %(default)s)"),
    ("--workers", _worker_count, 1,
     "processes serving the listening sockets, each with its own pool (one Python "
     "process uses one core); 'auto': one per core (default: %(default)s)"),
    ("--replica-max-lag", float, settings.REPLICA_MAX_LAG,
     "seconds a replica may lag and still answer reads, measured by a heartbeat the node "
     "writes on the primary; a change on the primary (a delete, a revoked token) is seen by "
     "every read that starts this long after it, even with the primary down "
     "(default: %(default)s)"),
    ("--drain-seconds", float, settings.DRAIN_SECONDS,
     "on SIGTERM, how long requests in flight may take (default: %(default)s)"),
]  # fmt: skip


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pgblobs",
        description="pgblobs: blobs of end-to-end-encrypted sync clients, in PostgreSQL",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the blobs HTTP API")
    _database_options(serve)
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ENDPOINT",
        help="a Twisted endpoint, e.g. tcp:9000:interface=127.0.0.1 or "
        "ssl:443:privateKey=key.pem:certKey=cert.pem (repeatable)",
    )
    serve.add_argument(
        "--services-listen",
        action="append",
        metavar="ENDPOINT",
        help="a Twisted endpoint for the provider's own services, e.g. "
        "tcp:9001:interface=127.0.0.1: PUT /incoming/{user}/{id} delivers "
        "mail, with a service token (repeatable; none by default)",
    )
    serve.add_argument(
        "--replica-dsn",
        action="append",
        metavar="DSN",
        help="a streaming replica that may answer reads (GET, HEAD, listings, counts, flags, "
        "stream downloads) while it is close behind; writes always go to the primary "
        "(repeatable)",
    )
    for flag, kind, default, help_text in _SERVE_LIMITS:
        serve.add_argument(flag, type=kind, default=default, help=help_text)
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per request (off by default: /metrics counts requests, and the "
        "line costs about a sixth of a small GET's CPU)",
    )
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="the database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    upgrade = db.add_parser("upgrade", help="bring the schema to the newest revision")
    _database_options(upgrade)
    upgrade.add_argument("--revision", default="head", help=argparse.SUPPRESS)
    upgrade.set_defaults(run=_db_upgrade)

    for command_name, help_text, holder, metavar, create, revoke in (
        (
            "token",
            "access tokens of users",
            "user",
            "USER",
            accounts.create_token,
            accounts.revoke_tokens,
        ),
        (
            "service-token",
            "access tokens of services (an MX delivering mail)",
            "service",
            "NAME",
            accounts.create_service_token,
            accounts.revoke_service_tokens,
        ),
    ):
        token = commands.add_parser(command_name, help=help_text).add_subparsers(
            dest=f"{command_name}_command", required=True, metavar="COMMAND"
        )
        for action, run, action_help in zip(
            ("create", "revoke"),
            _token_commands(create, revoke, holder),
            (
                f"print a new token for the {holder} {metavar} (only the token)",
                f"revoke every token of the {holder} {metavar}",
            ),
            strict=True,
        ):
            command = token.add_parser(action, help=action_help)
            command.add_argument("holder", metavar=metavar)
            _database_options(command)
            command.set_defaults(run=run)

    quota = commands.add_parser("quota", help="per-user quotas").add_subparsers(
        dest="quota_command", required=True, metavar="COMMAND"
    )
    set_quota = _user_command(
        quota, "set", "set USER's quota: BYTES, 'unlimited' or 'default'", _quota_set
    )
    set_quota.add_argument("bytes", type=_quota_setting)
    _user_command(quota, "show", "USER's quota and usage", _quota_show)

    report = commands.add_parser("report", help="usage reports").add_subparsers(
        dest="report", required=True, metavar="REPORT"
    )
    usage = report.add_parser("usage", help="usage per user, biggest first")
    usage.add_argument("--user", help="only this user")
    usage.add_argument("--top", type=_non_negative, help="only the N biggest users")
    usage.add_argument(
        "--quota-bytes",
        type=_byte_limit,
        default=settings.QUOTA_BYTES,
        help="the servers' default quota, for users without an override",
    )
    daily = report.add_parser("daily", help="blobs and bytes written and deleted per day")
    daily.add_argument("--days", type=_non_negative, default=30)
    large_objects = report.add_parser(
        "large-objects",
        help="large objects, their bytes on disk, and the OIDs left (a cluster has about 4.29 "
        "billion)",
    )
    for parser_ in (usage, daily, large_objects):
        parser_.add_argument("--format", choices=("table", "csv", "json"), default="table")
        _database_options(parser_)
        parser_.set_defaults(run=_report)

    purge = commands.add_parser("purge", help="remove old tombstones")
    purge.add_argument(
        "--older-than", type=_duration, required=True, metavar="DURATION", help="e.g. 30d, 12h, 2w"
    )
    purge.add_argument("--dry-run", action="store_true", help="only count them")
    _database_options(purge)
    purge.set_defaults(run=_purge)

    fsck = commands.add_parser(
        "fsck", help="check blob rows against large objects; exit 1 on problems"
    )
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="unlink orphan large objects; make rows without content tombstones",
    )
    fsck.add_argument(
        "--verify-content",
        action="store_true",
        help="re-read every live blob and compare size and sha256",
    )
    _database_options(fsck)
    fsck.set_defaults(run=_fsck)

    import_fs = commands.add_parser("import-fs", help="import a Soledad filesystem blob store")
    import_fs.add_argument("root", help="the store's root directory")
    import_fs.add_argument("--user", help="only this user")
    import_fs.add_argument("--dry-run", action="store_true", help="report, change nothing")
    import_fs.add_argument(
        "--jobs",
        type=_positive,
        default=2,
        help="batches imported at once, each on its own connection (default: %(default)s)",
    )
    _database_options(import_fs)
    import_fs.set_defaults(run=_import_fs)

    export_fs = commands.add_parser(
        "export-fs", help="write the blobs out in the Soledad filesystem layout (resumable)"
    )
    export_fs.add_argument("root", help="the directory to write the store into")
    export_fs.add_argument("--user", help="only this user")
    _database_options(export_fs)
    export_fs.set_defaults(run=_export_fs)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except _FAILURES as error:
        raise SystemExit(f"pgblobs: {_message(error)}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
