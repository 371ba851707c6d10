"""The ``pgblobs`` command: argument parsing over the package's rooms.

Each command is a few lines that call the backend, the accounts or the
schema module; errors come back as one readable line and a non-zero exit.
"""
import argparse
import os
import sys

import psycopg2
import sqlalchemy.exc
from twisted.internet import defer, task

from pgblobs import schema
from pgblobs.accounts import Accounts
from pgblobs.cluster import ClusterFailed, LocalCluster, PostgresNotFound
from pgblobs.database import Database
from pgblobs.errors import BlobsError
from pgblobs.web.site import Limits

_FAILURES = (psycopg2.Error, sqlalchemy.exc.DBAPIError, BlobsError, ValueError,
             ClusterFailed, PostgresNotFound)


def _message(error):
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        error = error.orig
    if isinstance(error, psycopg2.Error):
        return "database error: " + str(error).strip().splitlines()[0]
    return str(error)


def _database_options(parser):
    parser.add_argument(
        "--dsn", default=os.environ.get("PGBLOBS_DSN"),
        help="libpq connection string or URL (default: $PGBLOBS_DSN, else the "
             "embedded database of `pgblobs serve` if it is running)")
    parser.add_argument("--data-dir", default=".pgblobs",
                        help="the embedded database's directory (default: .pgblobs)")


def _dsn(args):
    if args.dsn:
        return args.dsn
    embedded = LocalCluster(args.data_dir)
    if embedded.is_running():
        return embedded.dsn
    raise SystemExit("pgblobs: no database given: pass --dsn, set PGBLOBS_DSN, "
                     "or start `pgblobs serve` (`make run`) for the embedded one")


def _with_accounts(work):
    """Run ``work(accounts)`` (a coroutine function) on a connected database."""
    def command(args):
        dsn = _dsn(args)

        async def main(reactor):
            try:
                database = await Database.connect(dsn, pool_size=1)
            except _FAILURES as error:
                raise SystemExit(f"pgblobs: {_message(error)}") from None
            try:
                await work(Accounts(database), args)
            except _FAILURES as error:
                raise SystemExit(f"pgblobs: {_message(error)}") from None
            finally:
                await database.close()
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return command


@_with_accounts
async def _token_create(accounts, args):
    print(await accounts.create_token(args.user))


@_with_accounts
async def _token_revoke(accounts, args):
    revoked = await accounts.revoke_tokens(args.user)
    print(f"revoked {revoked} token(s) of {args.user}")


def _quota_value(text):
    if text.lower() in ("none", "unlimited"):
        return None
    if text.lower() == "default":
        return "default"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of bytes, 'unlimited' or 'default'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a quota cannot be negative")
    return value


@_with_accounts
async def _quota_set(accounts, args):
    if args.bytes == "default":
        await accounts.clear_quota(args.user)
        print(f"{args.user}: the server's default quota applies")
    else:
        await accounts.set_quota(args.user, args.bytes)
        limit = "unlimited" if args.bytes is None else f"{args.bytes} bytes"
        print(f"{args.user}: quota {limit}")


@_with_accounts
async def _quota_show(accounts, args):
    has_override, quota_bytes, used = await accounts.quota(args.user)
    if not has_override:
        limit = "server default"
    elif quota_bytes is None:
        limit = "unlimited"
    else:
        limit = f"{quota_bytes} bytes"
    print(f"{args.user}: quota {limit}, {used} bytes used")


def _db_upgrade(args):
    schema.upgrade(_dsn(args), args.revision)
    print(f"database is at revision {schema.head_revision() if args.revision == 'head' else args.revision}")


def _serve(args):
    from pgblobs import serve
    options = serve.ServeOptions(
        dsn=args.dsn, listen=args.listen or [serve.DEFAULT_LISTEN],
        quota_bytes=args.quota_bytes, data_dir=args.data_dir, pool_size=args.pool_size,
        limits=Limits(max_blob_bytes=args.max_blob_bytes, max_json_bytes=args.max_json_bytes,
                      idle_timeout=args.idle_timeout),
        drain_seconds=args.drain_seconds)
    serve.start_logging(args.log_format)

    async def main(reactor):
        try:
            await serve.run(reactor, options)
        except _FAILURES as error:
            raise SystemExit(f"pgblobs: {_message(error)}") from None
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pgblobs", description="pgblobs: blobs of end-to-end-encrypted sync clients, in PostgreSQL")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the blobs HTTP API")
    _database_options(serve)
    serve.add_argument("--listen", action="append", metavar="ENDPOINT",
                       help="a Twisted endpoint, e.g. tcp:9000:interface=127.0.0.1 or "
                            "ssl:443:privateKey=key.pem:certKey=cert.pem (repeatable)")
    serve.add_argument("--quota-bytes", type=_quota_value, default=200 * 1024 * 1024,
                       help="default quota per user in bytes, or 'unlimited' (default: 200 MiB)")
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument("--pool-size", type=int, default=8,
                       help="database connections per pool (default: 8)")
    serve.add_argument("--max-blob-bytes", type=_non_negative, default=Limits.max_blob_bytes)
    serve.add_argument("--max-json-bytes", type=_non_negative, default=Limits.max_json_bytes)
    serve.add_argument("--idle-timeout", type=float, default=Limits.idle_timeout,
                       help="seconds a silent connection is kept (default: 60)")
    serve.add_argument("--drain-seconds", type=float, default=30.0,
                       help="on SIGTERM, how long requests in flight may take (default: 30)")
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="the database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND")
    upgrade = db.add_parser("upgrade", help="bring the schema to the newest revision")
    _database_options(upgrade)
    upgrade.add_argument("--revision", default="head", help=argparse.SUPPRESS)
    upgrade.set_defaults(run=_db_upgrade)

    token = commands.add_parser("token", help="access tokens").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND")
    create = token.add_parser("create", help="print a new token for USER (only the token)")
    create.add_argument("user")
    _database_options(create)
    create.set_defaults(run=_token_create)
    revoke = token.add_parser("revoke", help="revoke every token of USER")
    revoke.add_argument("user")
    _database_options(revoke)
    revoke.set_defaults(run=_token_revoke)

    quota = commands.add_parser("quota", help="per-user quotas").add_subparsers(
        dest="quota_command", required=True, metavar="COMMAND")
    set_quota = quota.add_parser("set", help="set USER's quota: BYTES, 'unlimited' or 'default'")
    set_quota.add_argument("user")
    set_quota.add_argument("bytes", type=_quota_value)
    _database_options(set_quota)
    set_quota.set_defaults(run=_quota_set)
    show = quota.add_parser("show", help="USER's quota and usage")
    show.add_argument("user")
    _database_options(show)
    show.set_defaults(run=_quota_show)
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
