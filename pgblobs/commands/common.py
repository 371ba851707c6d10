"""What the commands share: the database options, a connection to a schema
at head, the argument types, and how a failure becomes one readable line."""

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from os import PathLike
from typing import Any, Protocol, TypeVar

import psycopg2
import sqlalchemy.exc
from twisted.internet import defer, task

from pgblobs import settings
from pgblobs.cluster import ClusterFailed, LocalCluster, PostgresNotFound
from pgblobs.db.sync import SyncConnection
from pgblobs.errors import BlobsError

# The errors a command reports in one line (and exit status 1), not a traceback.
FAILURES = (
    psycopg2.Error,
    sqlalchemy.exc.DBAPIError,
    BlobsError,
    ValueError,
    ClusterFailed,
    PostgresNotFound,
)

Handler = Callable[[argparse.Namespace], None]


class Subcommands(Protocol):
    """What argparse's ``add_subparsers()`` returns (a private class of argparse)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def message(error: BaseException) -> str:
    """``error`` as the one line a command prints."""
    cause = error.orig if isinstance(error, sqlalchemy.exc.DBAPIError) else error
    if isinstance(cause, psycopg2.Error):
        return "database error: " + str(cause).strip().splitlines()[0]
    return str(cause)


def database_options(parser: argparse.ArgumentParser) -> None:
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


def dsn(args: argparse.Namespace) -> str:
    """The database of ``args``: --dsn, else the running embedded one."""
    if args.dsn:
        return str(args.dsn)
    embedded = LocalCluster(args.data_dir)
    if embedded.is_running():
        return embedded.dsn
    raise SystemExit(
        f"pgblobs: no database given: pass --dsn, set {settings.DSN_VARIABLE}, "
        "or start `pgblobs serve` (`make run`) for the embedded one"
    )


def react(main: Callable[[], Awaitable[None]]) -> None:
    """Run the coroutine function ``main()`` under the reactor; a failure it
    raises becomes one readable line and exit status 1."""

    async def guarded(reactor: Any) -> None:
        try:
            await main()
        except FAILURES as error:
            raise SystemExit(f"pgblobs: {message(error)}") from None

    task.react(lambda reactor: defer.ensureDeferred(guarded(reactor)))


def with_connection(
    work: Callable[[SyncConnection, argparse.Namespace], None],
) -> Handler:
    """Run ``work(connection, args)`` on a SyncConnection to a schema at head."""

    def command(args: argparse.Namespace) -> None:
        connection = SyncConnection.connect_at_head(dsn(args))
        try:
            work(connection, args)
        finally:
            connection.close()

    return command


Number = TypeVar("Number", int, float)


def conclude(summary: str, failed: Sequence[tuple[PathLike[str] | str, str]]) -> None:
    """The end of a copy (import-fs, export-fs): each path that ``failed``
    and why, on stderr, then ``summary``; exit status 1 if any failed."""
    for path, reason in failed:
        print(f"failed {path}: {reason}", file=sys.stderr)
    print(summary)
    if failed:
        raise SystemExit(1)


def _checked(
    name: str, convert: Callable[[str], Number], accept: Callable[[Number], bool], refusal: str
) -> Callable[[str], Number]:
    """An argument type: ``convert(text)``, refused with ``refusal`` unless
    ``accept`` takes it. ``name`` is what argparse calls the type when the
    text is no number at all ("invalid NAME value")."""

    def parse(text: str) -> Number:
        value = convert(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(refusal)
        return value

    parse.__name__ = name
    return parse


non_negative = _checked("_non_negative", int, lambda value: value >= 0, "must not be negative")
non_negative_seconds = _checked(
    "_non_negative_seconds", float, lambda value: value >= 0, "must not be negative"
)
positive = _checked("_positive", int, lambda value: value >= 1, "must be at least 1")
# `not value > 0` refuses NaN too.
positive_float = _checked("_positive_float", float, lambda value: value > 0, "must be more than 0")


def limit(text: str, unit: str) -> int | None:
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


def byte_limit(text: str) -> int | None:
    return limit(text, "bytes")


def blob_limit(text: str) -> int | None:
    return limit(text, "blobs")
